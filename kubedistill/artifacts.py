"""The layout of a job's output: what `kubedistill run` and the RayJob write, what `kubedistill serve`
serves and what a StudentDeployment's init container fetches. One definition, used by all three.

    <output>/
      distillationjob.yaml      the resolved spec the run used (defaults filled)
      pipeline.log              the run's log, kept next to the artifact
      stages/<stage>.json       a marker per finished stage: a rerun skips it (resume)
      data/                     the split, as the pipeline saw it (capture_eval.jsonl: the held-out
                                captured traffic of dataset.capture)
      teacher/                  the task-adapted teacher (classification)
      soft_targets/             cached teacher outputs
      teacher_outputs/          what a language-model teacher said per row (rows.parquet + meta.json):
                                reusable by another job (distillation.teacherOutputsUri)
      teacher_journal.jsonl     an endpoint teacher's answers as they arrive: a restarted run resumes from it
      answers_journal/          a teacher's answers for sequence-level KD (local or endpoint), batch by batch as
                                they finish: a restarted run answers only the rest (removed once cached)
      teachers/<i>/             each of several teachers (`teachers`): its own teacher/, teacher_outputs/, ...;
                                teacher_outputs/ then holds their combination (meta.json: "ensemble")
      checkpoints/              training checkpoints (Ray Train)
      downloads/                remote models (s3://, hf://), fetched once
      student/                  the trained student: safetensors, config, tokenizer
      train_report.json         training metrics
      onnx/                     ONNX exports (fp32 and quantized); onnx/genai/ generation builds (causal LM)
      model_repository/         what Triton serves (see below)
      report.json, report.md    the gap evaluation (keys: kubedistill.report.Report)
      plots/*.png

    model_repository/
      serving.json              ServingManifest: what the router needs (file at the root: Triton skips it)
      student/config.pbtxt      platform onnxruntime_onnx
      student/1/model.onnx      the quantized student
      student/tokenizer.json    tokenizer files the router loads (plain files in a model folder: Triton
      student/labels.txt        ignores them)
      teacher/...               optional: the teacher, for colocated escalation

    A causal-LM job's student/ and teacher/ are generation models instead (kind "generation"):
      student/config.pbtxt      backend python, decoupled: streams one token per response
      student/1/model.py        runs ONNX Runtime GenAI (kubedistill_jobs/triton_models/generate.py)
      student/1/genai/          the ONNX Runtime GenAI model (KV cache; INT4/INT8/FP32 weights)
      student/chat_template.jinja, tokenizer files    what the router renders and tokenizes with
      student/hf/               the model in float16 safetensors, with its config, tokenizer and chat template:
                                what Triton's vLLM backend serves (a non-numeric folder: Triton skips it)

    A StudentDeployment with `triton.backend: vllm` turns each generation model it serves into a vLLM model
    while fetching (kind "vllm"): config.pbtxt with backend "vllm", 1/model.json (vLLM's engine arguments,
    `model` pointing at <model>/hf), the tensors VLLM_INPUTS / VLLM_OUTPUTS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field

from kubedistill.signals import Signal
from kubedistill.uris import join_uri

STUDENT_MODEL = "student"
TEACHER_MODEL = "teacher"
SERVING_MANIFEST = "serving.json"
MODEL_REPOSITORY = "model_repository"
REPORT_JSON = "report.json"
CHECKPOINTS = "checkpoints"
TEACHER_OUTPUTS = "teacher_outputs"
STUDENT_FOLDER = "student"  # the trained fp32 student: the teacher of a job whose teacher.jobRef names this one


def model_repository_uri(output_uri: str) -> str:
    """Where a job whose `output.uri` is `output_uri` leaves its Triton model repository."""
    return join_uri(output_uri, MODEL_REPOSITORY)


def student_uri(output_uri: str) -> str:
    """Where a job whose `output.uri` is `output_uri` leaves its trained fp32 student (a transformers folder)."""
    return join_uri(output_uri, STUDENT_FOLDER)


def report_uri(output_uri: str) -> str:
    """Where a job whose `output.uri` is `output_uri` leaves report.json."""
    return join_uri(output_uri, REPORT_JSON)


# The pipeline's stages in the order they run: the one list (each has a module in kubedistill_jobs/stages/).
Stage = Literal["data", "teacher", "soft-targets", "train", "compress", "evaluate", "export"]
STAGES: tuple[Stage, ...] = get_args(Stage)


@dataclass(frozen=True)
class OutputLayout:
    """Paths inside one job's local output folder."""

    root: Path

    @property
    def resolved_spec(self) -> Path:
        return self.root / "distillationjob.yaml"

    @property
    def log(self) -> Path:
        return self.root / "pipeline.log"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_marker(self, stage: Stage) -> Path:
        return self.stages / f"{stage}.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def capture_eval(self) -> Path:
        """dataset.capture: the captured rows held out to compare the new student with the served one."""
        return self.data / "capture_eval.jsonl"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def soft_targets(self) -> Path:
        return self.root / "soft_targets"

    @property
    def teacher_outputs(self) -> Path:
        return self.root / TEACHER_OUTPUTS

    def teacher_member(self, index: int) -> OutputLayout:
        """The working folders of the `index`-th of several teachers (`teachers/<index>/`)."""
        return OutputLayout(self.root / "teachers" / str(index))

    @property
    def teacher_journal(self) -> Path:
        return self.root / "teacher_journal.jsonl"

    @property
    def answers_journal(self) -> Path:
        return self.root / "answers_journal"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def downloads(self) -> Path:
        """Remote teachers and students, fetched once (`downloads/teacher`, `downloads/student`)."""
        return self.root / "downloads"

    @property
    def student(self) -> Path:
        return self.root / STUDENT_FOLDER

    @property
    def train_report(self) -> Path:
        return self.root / "train_report.json"

    @property
    def onnx(self) -> Path:
        return self.root / "onnx"

    @property
    def genai(self) -> Path:
        """ONNX Runtime GenAI builds of a causal LM for generation (`genai/student`, `genai/teacher`)."""
        return self.onnx / "genai"

    @property
    def model_repository(self) -> Path:
        return self.root / MODEL_REPOSITORY

    @property
    def serving_manifest(self) -> Path:
        return self.model_repository / SERVING_MANIFEST

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


class ServedModel(BaseModel):
    """One model in the repository, as the router calls it."""

    name: str = Field(description="Triton model name (its folder).")
    inputs: list[str] = Field(description="Input tensor names, in the order the tokenizer fills them (INT64).")
    output: str = Field(description="Output tensor name (logits, FP32; the token id per response for generation).")
    max_batch_size: int = Field(description="Triton max_batch_size.")
    kind: Literal["logits", "generation", "vllm"] = Field(
        default="logits", description="logits: one call, one logits tensor; generation: a decoupled model that "
        "streams one token (id, log-probability, top-k) per response (GENERATION_INPUTS/OUTPUTS); vllm: Triton's "
        "vLLM backend, text in, text and log-probabilities (JSON) out (VLLM_INPUTS/OUTPUTS).")
    precision: str | None = Field(default=None, description="Weights of a generation model: int4, int8 or fp32.")
    context_length: int | None = Field(default=None, description="Prompt plus generated tokens, at most "
                                       "(generation models).")
    weights: str | None = Field(default=None, description="Generation models: the folder, relative to the model "
                                "repository, of the float16 safetensors, config and tokenizer (what vLLM loads).")


# The tensors of a generation model (kind "generation"); the router and the Triton python model share them.
GENERATION_INPUTS = ("input_ids", "max_tokens", "temperature", "top_p", "seed", "top_logprobs")
GENERATION_OUTPUTS = ("token_id", "logprob", "top_ids", "top_logprobs_values")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Inside a generation model's folder: the model as Hugging Face safetensors (float16), for the vLLM backend.
HF_WEIGHTS_FOLDER = "hf"
HF_WEIGHTS_DTYPE = "float16"
# Triton's vLLM backend (triton-inference-server/vllm_backend, src/model.py `auto_complete_config`): the inputs the
# router sets and the outputs it reads. `sampling_parameters` is vLLM's SamplingParams as JSON; `logprobs` is a
# JSON list, per new token, of {token_id: {logprob, rank, decoded_token}}, the sampled token first;
# `finish_reason` is "None" until the last response (which is how a client without Triton's empty final response
# knows the stream is over).
VLLM_INPUTS = ("text_input", "stream", "sampling_parameters", "exclude_input_in_output", "return_finish_reason",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")
VLLM_OUTPUTS = ("text_output", "finish_reason", "logprobs", "num_input_tokens", "num_output_tokens")
VLLM_ENGINE_ARGS_FILE = "model.json"


class ServingManifest(BaseModel):
    """`model_repository/serving.json`: everything the router needs besides Triton itself."""

    task: Literal["sequence-classification", "causal-lm"]
    labels: list[str] | None = None
    max_length: int
    tokenizer: str = Field(description="Folder with tokenizer.json, relative to the model repository.")
    student: ServedModel
    teacher: ServedModel | None = None
    teacher_tokenizer: str | None = Field(default=None, description="The teacher's tokenizer folder, when it differs.")
    recommended_threshold: float | None = None
    confidence_signal: Signal = "max-probability"
    cascade_thresholds: dict[str, float] | None = Field(
        default=None, description="The job's evaluation.tiers: thresholds recommended for the cascade evaluated "
        "together (max-probability), by model (`student`, each tier's name); router.tiers left unset take them.")
    chat_template: str | None = Field(default=None, description="Generation: the chat template file the router "
                                      "renders messages with, relative to the model repository (the student's own).")
    system_prompt: str | None = Field(
        default=None, description="Generation: the system turn the student was trained with (task.prompt.system; "
        "empty otherwise, as the data stage renders conversations and prompts), put first in a chat request that has "
        "none, so that it reads what it learnt from and not the template's default system prompt; None (exports "
        "of earlier releases): the template's own default.")
    model_version: str = Field(description="Version of this export (the run id).")

    @classmethod
    def read(cls, model_repository: Path) -> ServingManifest:
        return cls.model_validate_json((model_repository / SERVING_MANIFEST).read_text())

    def write(self, model_repository: Path) -> None:
        model_repository.mkdir(parents=True, exist_ok=True)
        (model_repository / SERVING_MANIFEST).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


def decoupled_model_config(backend: str, tensors: dict[str, tuple[str, str, bool]], inputs: tuple[str, ...],
                           outputs: tuple[str, ...], instance_kind: str, name: str | None = None) -> str:
    """config.pbtxt of a decoupled Triton model without Triton batching (generation streams tokens).
    `tensors` maps each tensor name to (data type, dims, optional); without `name` Triton takes the folder's."""
    lines = ([f'name: "{name}"'] if name else []) + [f'backend: "{backend}"', "max_batch_size: 0",
                                                    "model_transaction_policy {\n  decoupled: true\n}"]
    for kind, names in (("input", inputs), ("output", outputs)):
        entries = []
        for tensor in names:
            dtype, dims, optional = tensors[tensor]
            entries.append(f'  {{\n    name: "{tensor}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n'
                           + ("    optional: true\n" if optional else "") + "  }")
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"
