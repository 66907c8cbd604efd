"""The DistillationJob resource: "teach this small student to behave like this big teacher on this data".

The pipeline (`kubedistill_jobs`), the operator and `kubedistill run` all read a job through these
models, and `crds/` is generated from them (`python -m kubedistill.api.crdgen`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kubedistill.api.base import (
    CAPTURE_URI_PATTERN,
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Condition,
    JobReference,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
    cel,
    cel_rules,
    check_capture_uri,
)
from kubedistill.api.meta import ObjectMeta

# Where models, data and outputs may live. `pkg://` names data or a model shipped inside an installed
# Python package (`pkg://<distribution-or-module>/<path inside it>`); `hf://` a Hugging Face hub id.
MODEL_URI_PATTERN = r"^(file://|s3://|pkg://|hf://|pvc://)\S+$|^/\S+$"
DATA_URI_PATTERN = r"^(file://|s3://|pkg://|hf://|pvc://)\S+$|^/\S+$"
OUTPUT_URI_PATTERN = r"^(file://|s3://|pvc://)\S+$|^/\S+$"
HTTP_URL_PATTERN = r"^https?://\S+$"

TaskType = Literal["sequence-classification", "causal-lm"]
LossType = Literal["forward-kl", "reverse-kl", "jsd"]
TeacherMode = Literal["cached", "online"]
CrossTokenizer = Literal["sequence-kd", "uld"]
EndpointApi = Literal["chat", "completions"]
LabelEncoding = Literal["name", "index"]
Quantization = Literal["none", "int8", "int4"]
PruningMethod = Literal["none", "layers", "heads"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Metric = Literal["accuracy", "macro_f1", "agreement", "kl", "perplexity", "latency", "rouge_l", "chrf", "exact_match"]
DEFAULT_METRICS: tuple[Metric, ...] = ("accuracy", "macro_f1", "agreement", "kl", "latency")
# Scores of generated answers (causal-lm): the first one listed in evaluation.metrics is the primary metric.
GENERATION_METRICS: tuple[Metric, ...] = ("rouge_l", "chrf", "exact_match")
JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class TaskPrompt(ApiModel):
    """How each text becomes a prompt (causal-lm): a chat turn rendered with the model's chat template, ending
    where the assistant's answer starts."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.user.contains('{text}')", "task.prompt.user must contain {text}, where each row's text goes",
                ".user"),
        )
    }

    system: str | None = Field(default=None, description="System message (default: an empty one).")
    user: str = Field(
        default="{text}",
        description="User message: `{text}` is replaced by the row's text, cut so that the prompt leaves room "
        "for the answer within task.maxLength.",
        min_length=1,
    )

    @model_validator(mode="after")
    def _template(self) -> TaskPrompt:
        if "{text}" not in self.user:
            raise ValueError("task.prompt.user: the template must contain {text}, where each row's text goes")
        return self


class TaskSpec(ApiModel):
    """What the student learns to do."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "self.type != 'sequence-classification' || (has(self.labels) && size(self.labels) >= 2)",
                "sequence-classification needs at least two task.labels",
                ".labels",
            ),
            cel("!has(self.prompt) || self.type == 'causal-lm'",
                "task.prompt is for causal-lm (a classification prompt is teacher.prompt)", ".prompt"),
        )
    }

    type: TaskType = Field(description="`sequence-classification` (one label per text) or `causal-lm`.")
    labels: list[str] | None = Field(
        default=None,
        description="Class names in index order (sequence-classification). Every label in the data must be one.",
        max_length=1000,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    max_length: int = Field(default=128, description="Tokens per example; longer texts are truncated.", ge=8, le=8192)
    prompt: TaskPrompt | None = Field(
        default=None,
        description="Causal-lm: each text is a prompt to answer, put into this chat turn; the answers come from "
        "distillation.sequenceLevel (a local teacher) or teacher.endpoint.",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_are_names(cls, labels: object) -> object:
        # YAML reads [1, 2, 3] as numbers; one message with the fix instead of one per item.
        if isinstance(labels, list) and any(not isinstance(label, str) for label in labels):
            quoted = ", ".join(f'"{label}"' for label in labels)
            raise ValueError(f"task.labels are class names (strings): quote numbers, e.g. [{quoted}]")
        return labels

    @model_validator(mode="after")
    def _labels_fit_task(self) -> TaskSpec:
        if self.type == "sequence-classification" and (not self.labels or len(self.labels) < 2):
            raise ValueError("task.labels: sequence-classification needs at least two labels, e.g. [neg, pos]")
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ValueError("task.labels: labels must be unique")
        if self.prompt is not None and self.type != "causal-lm":
            raise ValueError("task.prompt: is for causal-lm; a classification prompt is teacher.prompt")
        return self


class EndpointPricing(ApiModel):
    """What the endpoint charges, per million tokens (any currency; the report repeats the numbers)."""

    input_per_million: float = Field(description="Price of 1M prompt tokens.", ge=0)
    output_per_million: float = Field(description="Price of 1M completion tokens.", ge=0)


class TeacherEndpoint(ApiModel):
    """An OpenAI-compatible completions endpoint that returns top-k logprobs."""

    url: str = Field(description="Base URL, e.g. `https://llm.example.com/v1`.", pattern=HTTP_URL_PATTERN)
    model: str = Field(description="Model name sent in each request.", min_length=1)
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key, sent as a bearer token."
    )
    timeout_seconds: float = Field(default=60.0, description="Timeout of one request.", gt=0, le=3600)
    max_new_tokens: int = Field(default=128, description="Tokens generated per prompt.", ge=1, le=8192)
    api: EndpointApi | None = Field(
        default=None,
        description="`chat` (`/chat/completions`) or `completions` (`/completions`); default: `chat` with a "
        "teacher.prompt (classification), `completions` otherwise. For causal-lm, `chat` answers each "
        "conversation (or text, as one user turn) up to its last user turn; `completions` continues texts and "
        "answers conversations rendered with the student's chat template.",
    )
    max_concurrency: int = Field(default=4, description="Requests in flight at once.", ge=1, le=1024)
    requests_per_minute: int | None = Field(default=None, description="Client-side cap on requests per minute.",
                                            ge=1)
    tokens_per_minute: int | None = Field(
        default=None, description="Client-side cap on tokens (prompt + completion) per minute.", ge=1
    )
    pricing: EndpointPricing | None = Field(
        default=None, description="Price of the endpoint's tokens, for the cost in progress, report and status."
    )


class FewShotExample(ApiModel):
    """One worked example shown to the teacher before each text (a user turn and its answer)."""

    text: str = Field(description="The example's text.", min_length=1)
    label: str = Field(description="Its label, one of task.labels.", min_length=1)


DEFAULT_USER_TEMPLATE = (
    "Classify the text into exactly one of these categories: {labels}.\n\nText: {text}\n\n"
    "Answer with the category only."
)


class TeacherPrompt(ApiModel):
    """How a language model teaches a classification task: each text is put into this prompt and the
    teacher's probability of each label's answer is its soft target."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.user.contains('{text}')", "teacher.prompt.user must contain {text}, where each row's text "
                "goes", ".user"),
            cel("!has(self.verbalizer) || self.verbalizer.all(k, self.verbalizer[k].matches('\\\\S'))",
                "teacher.prompt.verbalizer: every answer must be a non-blank string", ".verbalizer"),
        )
    }

    system: str | None = Field(default=None, description="System message; may use `{labels}`.")
    user: str = Field(
        default=DEFAULT_USER_TEMPLATE,
        description="User message: `{text}` is replaced by the row's text, `{labels}` by the answers, "
        "comma-separated.",
        min_length=1,
    )
    few_shot: list[FewShotExample] | None = Field(
        default=None, description="Examples shown before each text, as earlier turns.", max_length=64
    )
    verbalizer: dict[str, str] | None = Field(
        default=None, description="The answer string of each label (default: the label itself)."
    )
    calibrate: bool = Field(
        default=True,
        description="Contextual calibration: divide out the teacher's label prior on content-free inputs "
        "(Zhao et al., 2021).",
    )

    @model_validator(mode="after")
    def _template(self) -> TeacherPrompt:
        if "{text}" not in self.user:
            raise ValueError("teacher.prompt.user: the template must contain {text}, where each row's text goes")
        for label, answer in (self.verbalizer or {}).items():
            if not answer.strip():
                raise ValueError(f"teacher.prompt.verbalizer: the answer of label {label!r} is blank")
        return self


class TeacherAdaptation(ApiModel):
    """How a classification teacher without a trained head is adapted to the task first."""

    method: Literal["auto", "head", "finetune", "none"] = Field(
        default="auto",
        description="`head` fits a linear head on frozen features, `finetune` trains the whole teacher, "
        "`none` uses the teacher as is, `auto` fits a head when the teacher has none for the task.",
    )
    epochs: int = Field(default=3, description="Epochs of adaptation.", ge=1, le=100)
    learning_rate: float = Field(default=2e-5, description="Learning rate of `finetune`.", gt=0, le=1)


class TeacherSpec(ApiModel):
    """The model that teaches: a model URI, a remote endpoint, or the student of another DistillationJob."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("(has(self.uri) ? 1 : 0) + (has(self.endpoint) ? 1 : 0) + (has(self.jobRef) ? 1 : 0) == 1",
                "set exactly one of teacher.uri, teacher.endpoint and teacher.jobRef"),
            cel("!has(self.jobRef) || (!has(self.prompt) && !has(self.ggufFile))",
                "teacher.jobRef: the referenced job's student is a classifier or causal LM saved by the pipeline: "
                "remove teacher.prompt and teacher.ggufFile", ".jobRef"),
        )
    }

    uri: str | None = Field(
        default=None,
        description="Model location: `pkg://`, `hf://`, `s3://`, `file://`, `pvc://` or an absolute path.",
        pattern=MODEL_URI_PATTERN,
    )
    gguf_file: str | None = Field(default=None, description="GGUF file inside `uri` to load (quantized checkpoints).")
    endpoint: TeacherEndpoint | None = Field(default=None, description="A remote OpenAI-compatible teacher.")
    job_ref: JobReference | None = Field(
        default=None,
        description="A teacher assistant chain: the fp32 student of this DistillationJob (same namespace, same "
        "task) teaches. The operator starts this job once that one has succeeded and passed its gate; "
        "`kubedistill run --teacher-job` takes its output folder or manifest.",
    )
    adapt: TeacherAdaptation = Field(
        default_factory=TeacherAdaptation, description="Adaptation of a classification teacher to the task."
    )
    prompt: TeacherPrompt | None = Field(
        default=None,
        description="Classification by a language model (a causal-LM teacher.uri, or teacher.endpoint): the "
        "prompt each text is put into. Gold labels are then optional.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        chosen = [n for n, v in (("uri", self.uri), ("endpoint", self.endpoint), ("jobRef", self.job_ref))
                  if v is not None]
        if len(chosen) != 1:
            raise ValueError(
                "teacher: set exactly one of teacher.uri (a model), teacher.endpoint (a remote API) and "
                "teacher.jobRef (another job's student)" + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        if self.job_ref is not None and (self.prompt is not None or self.gguf_file is not None):
            raise ValueError("teacher.jobRef: the referenced job's student is a model the pipeline saved: remove "
                             "teacher.prompt and teacher.ggufFile")
        return self


class EnsembleTeacher(TeacherSpec):
    """One of several teachers (`teachers`): a classification model (`uri`) or a language model labelling
    through `prompt` (a causal-LM `uri`, or an `endpoint`), and its weight in the combination."""

    weight: float = Field(default=1.0, description="Weight of this teacher's distribution in the combination "
                          "(normalised over the teachers; 0 leaves it out but still reports its quality).", ge=0,
                          le=1000)


EnsembleCombination = Literal["mean", "product"]


class StudentArchitecture(ApiModel):
    """A fresh student of the teacher's family, sharing its tokenizer and vocabulary."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "self.hiddenSize % self.numAttentionHeads == 0",
                "student.architecture.hiddenSize must be a multiple of numAttentionHeads",
                ".hiddenSize",
            ),
        )
    }

    num_layers: int = Field(description="Transformer layers.", ge=1, le=128)
    hidden_size: int = Field(description="Hidden size.", ge=16, le=16384)
    num_attention_heads: int = Field(description="Attention heads.", ge=1, le=256)
    intermediate_size: int | None = Field(
        default=None, description="Feed-forward size; defaults to 4 × hiddenSize.", ge=16, le=65536
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> StudentArchitecture:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"student.architecture.hiddenSize ({self.hidden_size}) must be a multiple of "
                f"numAttentionHeads ({self.num_attention_heads})"
            )
        return self


class StudentFromTeacher(ApiModel):
    """A student made of a subset of the teacher's layers (DistilBERT-style initialisation), optionally with
    narrower feed-forward blocks (Minitron-style width pruning)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.layers) || self.layers.all(i, i >= 0)",
                "student.fromTeacher.layers must be teacher layer indices (0 or more)", ".layers"),
        )
    }

    layers: list[int] | None = Field(
        default=None,
        description="Teacher layer indices to keep, in order. Default: every other layer.",
        min_length=1,
        max_length=128,
    )
    intermediate_size: int | None = Field(
        default=None,
        description="Feed-forward channels kept in each layer (default: all of the teacher's): those with the "
        "largest activation importance on training text, as Minitron does.",
        ge=1,
        le=65536,
    )
    vocabulary: Literal["teacher", "corpus"] = Field(
        default="teacher",
        description="teacher: the teacher's whole vocabulary. corpus: only the tokens the training data uses "
        "(the prompts and the teacher's answers) and the byte-level BPE merges that build them, with every "
        "single-byte token, so that any text still tokenizes (vocabulary trimming): in a small student of a "
        "large-vocabulary teacher the embedding is most of the parameters. The student gets its own tokenizer, "
        "which splits the training text exactly as the teacher's does; the teacher's soft targets are mapped "
        "onto it (the teacher's mass on dropped tokens is the loss's remaining bucket for a forward KL at "
        "temperature 1, else the kept candidates are renormalised). causal-lm, teacherMode cached, no pruning "
        "or hidden states, a generation metric in evaluation.metrics.",
    )

    @model_validator(mode="after")
    def _layer_indices(self) -> StudentFromTeacher:
        negative = [i for i in self.layers or [] if i < 0]
        if negative:
            raise ValueError(f"student.fromTeacher.layers: {negative} are not layer indices (0 or more)")
        return self


class StudentSpec(ApiModel):
    """The model that learns: pretrained, a fresh architecture, or derived from the teacher."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "(has(self.uri) ? 1 : 0) + (has(self.architecture) ? 1 : 0) + (has(self.fromTeacher) ? 1 : 0) == 1",
                "set exactly one of student.uri, student.architecture and student.fromTeacher",
            ),
        )
    }

    uri: str | None = Field(default=None, description="A pretrained small model.", pattern=MODEL_URI_PATTERN)
    architecture: StudentArchitecture | None = Field(
        default=None, description="A fresh model of the teacher's family and tokenizer."
    )
    from_teacher: StudentFromTeacher | None = Field(
        default=None, description="Initialise from a subset of the teacher's layers."
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentSpec:
        chosen = [n for n, v in (("uri", self.uri), ("architecture", self.architecture),
                                 ("fromTeacher", self.from_teacher)) if v is not None]
        if len(chosen) != 1:
            raise ValueError(
                "student: set exactly one of student.uri, student.architecture and student.fromTeacher"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self


class StudentDeploymentReference(ApiModel):
    """A StudentDeployment in the same namespace."""

    name: str = Field(description="Name of the StudentDeployment.", pattern=DNS_LABEL_PATTERN, max_length=63)


class CaptureDataSpec(ApiModel):
    """Traffic a StudentDeployment's router captured (`router.capture`), mixed into the training data.

    Captured rows carry the teacher's answer from serving: for classification its label is the row's label
    (the hard-label term and the comparison use it), and the job's own teacher gives the soft targets as for
    every other row. A share is held out: the report compares the new student with the one that was serving
    (its answers are in the records) on those rows, by agreement with the teacher's answers."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("has(self.studentDeploymentRef) != has(self.uri)",
                "set exactly one of dataset.capture.studentDeploymentRef and dataset.capture.uri"),
        )
    }

    student_deployment_ref: StudentDeploymentReference | None = Field(
        default=None, description="Read what this StudentDeployment's router captures (its spec.router.capture.uri; "
        "in a cluster only)."
    )
    uri: str | None = Field(default=None, description="The capture folder: `file://`, `pvc://` or `s3://`.",
                            pattern=CAPTURE_URI_PATTERN)
    ratio: float = Field(
        description="Share of the training rows that are captured rows: the captured training rows are repeated or "
        "subsampled (seeded) to make up this share next to every original training row; 1 trains on captured rows "
        "only, 0 uses the capture for the comparison alone.", ge=0, le=1,
    )
    eval_fraction: float = Field(default=0.3, description="Share of captured rows held out for the comparison with "
                                 "the served student (split by training.seed).", gt=0, lt=1)
    min_gain: float | None = Field(
        default=0.0, description="Gate: the new student's agreement with the teacher on held-out captured rows minus "
        "the served student's must be at least this (0: not worse); null: compared and reported, not gated.",
        ge=-1, le=1,
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _uri(cls, value: object) -> object:
        return check_capture_uri(value, "dataset.capture.uri")

    @model_validator(mode="after")
    def _one_source(self) -> CaptureDataSpec:
        if (self.student_deployment_ref is None) == (self.uri is None):
            raise ValueError("dataset.capture: set exactly one of studentDeploymentRef and uri")
        return self


class DatasetSpec(ApiModel):
    """The data the teacher labels and the student learns from."""

    uri: str = Field(
        description="jsonl/csv/parquet file, a folder of `<label>/*.txt`, `pkg://`, `hf://` or `s3://`.",
        pattern=DATA_URI_PATTERN,
    )
    text_field: str = Field(default="text", description="Column holding the input text.", min_length=1)
    label_field: str | None = Field(
        default="label",
        description="Column holding the gold label (classification); null when unlabelled. A named (or the "
        "default) column that no row has is refused.",
    )
    label_encoding: LabelEncoding = Field(
        default="name",
        description="`name`: the label column holds class names, matched to task.labels by their text whatever "
        "the file format (a CSV's 5 is the label `5`); `index`: it holds 0-based indices into task.labels.",
    )
    max_dropped_fraction: float = Field(
        default=0.05,
        description="Largest share of rows that may be dropped (no text, text that is not valid Unicode, a label "
        "that is not a class name); above it the data stage refuses the dataset. Repeated texts are not counted.",
        ge=0,
        le=1,
    )
    eval_fraction: float = Field(
        default=0.2, description="Share of rows held out for evaluation (split by `training.seed`).", gt=0, lt=1
    )
    max_samples: int | None = Field(default=None, description="Use at most this many rows (after shuffling).", ge=2)
    reference_field: str | None = Field(
        default=None,
        description="Causal-lm: column holding each prompt's reference answer, the gold the generation metrics "
        "(evaluation.metrics rouge_l, chrf, exact_match) score against. Text documents (`.txt`) have the columns "
        "`title` (their first line) and `body` (the rest) besides `text`.",
        min_length=1,
    )
    capture: CaptureDataSpec | None = Field(
        default=None, description="Traffic captured by a StudentDeployment's router, mixed into the training rows."
    )


class HiddenStateDistillation(ApiModel):
    """Feature distillation: match the student's hidden states to the teacher's through a learned projection."""

    enabled: bool = Field(default=False, description="Add the hidden-state loss.")
    weight: float = Field(default=1.0, description="Weight of the hidden-state loss.", ge=0, le=100)


class SequenceLevelSpec(ApiModel):
    """Sequence-level KD from a local teacher (causal-lm): the teacher answers every training prompt once, and
    the student learns those answers with the teacher's top-k soft targets on each answer token."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.n == 1 || self.temperature > 0.0",
                "distillation.sequenceLevel.n above 1 needs temperature > 0 (greedy answers are all the same)",
                ".n"),
            cel("!self.completionOnlyLoss || self.promptTokenShare == 1.0",
                "distillation.sequenceLevel.promptTokenShare below 1 needs completionOnlyLoss: false (with the "
                "answers alone in the loss no prompt token is a target)", ".promptTokenShare"),
        )
    }

    n: int = Field(default=1, description="Answers per prompt (each one a training row).", ge=1, le=64)
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 answers greedily.", ge=0, le=10)
    top_p: float = Field(default=1.0, description="Nucleus sampling: the smallest set of tokens whose "
                         "probability reaches top_p (sampled answers).", gt=0, le=1)
    max_new_tokens: int = Field(default=32, description="Tokens per answer, at most.", ge=1, le=8192)
    completion_only_loss: bool = Field(
        default=True, description="Train on the answer tokens alone (TRL's completion_only_loss): the prompt is "
        "input, not a target, so a small student spends its capacity on the task, not on modelling the prompts. "
        "false also fits the prompt tokens (hard targets).",
    )
    prompt_token_share: float = Field(
        default=1.0, description="With completionOnlyLoss false: the share of the prompt tokens that are targets "
        "in each step, drawn afresh every step (every answer token always is). The student's logits over the "
        "vocabulary are computed only where they count: 0.25 halved a training step of examples/headlines (80-token "
        "prompts, 16-token answers).",
        gt=0, le=1,
    )

    @model_validator(mode="after")
    def _sampling(self) -> SequenceLevelSpec:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"distillation.sequenceLevel.n: {self.n} greedy answers (temperature 0) are all the "
                             "same; set temperature > 0 to sample them, or n: 1")
        if self.completion_only_loss and self.prompt_token_share < 1:
            raise ValueError(f"distillation.sequenceLevel.promptTokenShare: {self.prompt_token_share} is a share of "
                             "the prompt tokens as targets, and completionOnlyLoss (true by default) makes none "
                             "targets; set completionOnlyLoss: false, or leave promptTokenShare out")
        return self


class StudentSampling(ApiModel):
    """How the student samples its own answers in on-policy batches (`distillation.onPolicy`)."""

    max_new_tokens: int = Field(
        default=32, description="Tokens the student generates per prompt (fewer when task.maxLength leaves less "
        "room after the prompt).", ge=1, le=4096,
    )
    temperature: float = Field(
        default=1.0, description="Sampling temperature; 0 is greedy. 1 samples the student's own distribution, "
        "as GKD does.", ge=0, le=10,
    )


class DistillationSpec(ApiModel):
    """The distillation objective."""

    loss: LossType = Field(
        default="forward-kl",
        description="`forward-kl` KL(teacher‖student), `reverse-kl` (MiniLLM), or `jsd` (generalized JSD, GKD).",
    )
    beta: float = Field(
        default=0.5, description="Interpolation of `jsd`: 0 is forward KL, 1 is reverse KL.", ge=0, le=1
    )
    temperature: float = Field(default=2.0, description="Softmax temperature of both distributions.", gt=0, le=100)
    alpha: float = Field(
        default=0.5, description="Weight of the soft (teacher) term; 1 − alpha weighs the hard-label term.", ge=0, le=1
    )
    top_k: int = Field(
        default=32, description="Teacher logits kept per token when caching (causal-lm).", ge=1, le=262144
    )
    teacher_mode: TeacherMode = Field(
        default="cached", description="`cached` runs the teacher once up front, `online` in every step."
    )
    hidden_states: HiddenStateDistillation = Field(
        default_factory=HiddenStateDistillation, description="Optional feature distillation."
    )
    require_soft_targets: bool = Field(
        default=False,
        description="Refuse hard-label distillation: fail when the teacher returns answers without "
        "log-probabilities.",
    )
    ensemble: EnsembleCombination = Field(
        default="mean",
        description="How several `teachers` combine: `mean`, the weighted mean of their class probabilities; "
        "`product`, the product of experts (the normalised weighted geometric mean).",
    )
    teacher_outputs_uri: str | None = Field(
        default=None,
        description="A `teacher_outputs/` folder of an earlier job: reuse what its teacher produced instead of "
        "calling the teacher again.",
        pattern=DATA_URI_PATTERN,
    )
    sequence_level: SequenceLevelSpec | None = Field(
        default=None,
        description="Causal-lm with teacher.uri: the teacher answers the training prompts and the student learns "
        "its answers (with its top-k soft targets) instead of the dataset's texts.",
    )
    on_policy: float = Field(
        default=0.0,
        description="Share of training batches that are on-policy (GKD's lambda, Agarwal et al. 2024): the "
        "student samples answers to the batch's prompts, the teacher scores them token by token and the student "
        "minimises `loss` on its own samples; the other batches are off-policy. causal-lm with a local teacher "
        "(teacher.uri) in teacherMode online.",
        ge=0,
        le=1,
    )
    sampling: StudentSampling = Field(
        default_factory=StudentSampling, description="How the student samples in on-policy batches."
    )
    cross_tokenizer: CrossTokenizer = Field(
        default="sequence-kd",
        description="causal-lm, when student.uri does not share the teacher's tokenizer (logit KD needs one "
        "vocabulary): `sequence-kd` trains the student on the teacher's greedy answers to the training prompts "
        "(hard tokens), `uld` adds Universal Logit Distillation (Boizard et al. 2024): the L1 distance between "
        "the sorted token distributions of both, aligned by answer position, weighted by `alpha`.",
    )


class TrainingSpec(ApiModel):
    """The optimisation loop."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!(has(self.epochs) && has(self.maxSteps))", "set training.epochs or training.maxSteps, not both"),
        )
    }

    epochs: int | None = Field(default=None, description="Passes over the training split (default 3).", ge=1, le=10000)
    max_steps: int | None = Field(default=None, description="Optimizer steps, instead of epochs.", ge=1, le=10_000_000)
    batch_size: int = Field(default=32, description="Examples per step, across all workers.", ge=1, le=65536)
    learning_rate: float = Field(default=5e-4, description="Peak learning rate (AdamW, linear decay).", gt=0, le=1)
    weight_decay: float = Field(default=0.01, description="AdamW weight decay.", ge=0, le=1)
    warmup_ratio: float = Field(default=0.06, description="Share of steps spent warming up.", ge=0, lt=1)
    seed: int = Field(default=42, description="Seed of the data split, shuffling and initialisation.", ge=0)
    checkpoint_every_steps: int = Field(default=200, description="Steps between checkpoints.", ge=1)
    mixed_precision: MixedPrecision = Field(
        default="auto", description="`auto` uses bf16 on GPUs that support it and fp32 on CPU; `bf16` also runs on "
        "CPUs with bf16 instructions (AVX512-BF16, AMX), fp32 elsewhere. A local teacher's answers follow it too."
    )

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("training: set training.epochs or training.maxSteps, not both")
        return self

    @property
    def resolved_epochs(self) -> int | None:
        """Epochs to run: `epochs`, none when `maxSteps` bounds the run instead, else 3."""
        if self.epochs is None and self.max_steps is None:
            return 3
        return self.epochs


class PruningSpec(ApiModel):
    """Structured pruning, followed by a short recovery distillation; the result stays dense."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.method != 'layers' || has(self.keepLayers)", "pruning method layers needs keepLayers",
                ".keepLayers"),
            cel("self.method != 'heads' || has(self.headRatio)", "pruning method heads needs headRatio",
                ".headRatio"),
            cel("!has(self.keepLayers) || self.keepLayers.all(i, i >= 0 && self.keepLayers.exists_one(j, j == i))",
                "pruning keepLayers must be distinct layer indices (0 or more), each listed once", ".keepLayers"),
        )
    }

    method: PruningMethod = Field(default="none", description="`layers`, `heads` or `none`.")
    keep_layers: list[int] | None = Field(default=None, description="Student layer indices kept by `layers`.",
                                          min_length=1, max_length=128)
    head_ratio: float | None = Field(default=None, description="Share of attention heads removed by `heads`.",
                                     gt=0, lt=1)
    recovery_steps: int = Field(default=100, description="Distillation steps after pruning.", ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _method_args(self) -> PruningSpec:
        if self.method == "layers" and not self.keep_layers:
            raise ValueError("compression.pruning.keepLayers: method `layers` needs the student layers to keep")
        if self.method == "heads" and self.head_ratio is None:
            raise ValueError("compression.pruning.headRatio: method `heads` needs the share of heads to remove")
        keep = self.keep_layers or []
        if any(i < 0 for i in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"compression.pruning.keepLayers: {keep} must be distinct layer indices (0 or more), "
                             "each listed once")
        return self


class CompressionSpec(ApiModel):
    """How the student is shrunk for serving."""

    quantization: Quantization = Field(
        default="int8", description="`int8` (dynamic, ONNX Runtime), `int4` (weight-only, causal-lm) or `none`."
    )
    pruning: PruningSpec = Field(default_factory=PruningSpec, description="Optional structured pruning.")


class GateSpec(ApiModel):
    """The bar a student must clear; below it the job fails with reason `GateNotMet` (artifacts are kept)."""

    min_retention: float | None = Field(
        default=0.95, description="Quantized student's quality over the teacher's; null disables the gate.",
        gt=0, le=2,
    )


class EconomicsSpec(ApiModel):
    """Prices and traffic for the report's cost figures (`report.json`, `economics`). Every field is optional;
    a figure whose inputs are missing is left out and the report says which field it needs. Hourly prices are
    for machines like the one the job evaluated on: the throughput that turns them into a cost per request is
    measured there."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.teacherPricePerHour) || (!has(self.teacherPricePerMillionInputTokens) && "
                "!has(self.teacherPricePerMillionOutputTokens))",
                "economics: price the teacher per token (an API) or per hour (self-hosted), not both",
                ".teacherPricePerHour"),
            cel("has(self.teacherPricePerMillionInputTokens) == has(self.teacherPricePerMillionOutputTokens)",
                "economics: set both teacherPricePerMillionInputTokens and teacherPricePerMillionOutputTokens",
                ".teacherPricePerMillionInputTokens"),
        )
    }

    currency: str = Field(default="USD", description="Currency of every price (a label: nothing is converted).",
                          min_length=1, max_length=8)
    teacher_price_per_million_input_tokens: float | None = Field(
        default=None, description="API teacher: price of 1M prompt tokens.", ge=0)
    teacher_price_per_million_output_tokens: float | None = Field(
        default=None, description="API teacher: price of 1M completion tokens.", ge=0)
    teacher_price_per_hour: float | None = Field(
        default=None, description="Self-hosted teacher: price of one serving replica per hour.", ge=0)
    student_price_per_hour: float | None = Field(
        default=None, description="Price of one student serving replica per hour.", ge=0)
    ray_cluster_price_per_hour: float | None = Field(
        default=None, description="Price of the job's whole Ray cluster per hour (for the job's cost and payback).",
        ge=0)
    requests_per_day: float | None = Field(
        default=None, description="Expected traffic, requests per day (for the monthly saving and payback).", gt=0)
    input_tokens_per_request: float | None = Field(
        default=None, description="Prompt tokens per request; unset: measured on the eval split.", gt=0)
    output_tokens_per_request: float | None = Field(
        default=None, description="Tokens the teacher answers with per request; unset: measured where the job "
        "measured it (a language-model teacher's labelling), else 0 for classification.", ge=0)
    utilization: float = Field(
        default=1.0, description="Average share of its measured throughput a serving replica is busy (hourly "
        "prices are divided by throughput × utilization).", gt=0, le=1)

    @model_validator(mode="after")
    def _one_teacher_price(self) -> EconomicsSpec:
        per_token = (self.teacher_price_per_million_input_tokens, self.teacher_price_per_million_output_tokens)
        if self.teacher_price_per_hour is not None and any(p is not None for p in per_token):
            raise ValueError("evaluation.economics: price the teacher per token (an API) or per hour (self-hosted), "
                             "not both: drop teacherPricePerHour or the per-token prices")
        if (per_token[0] is None) != (per_token[1] is None):
            raise ValueError("evaluation.economics: set both teacherPricePerMillionInputTokens and "
                             "teacherPricePerMillionOutputTokens (0 for a side that is free)")
        return self


MAX_EVALUATION_TIERS = 8  # as router.tiers of a StudentDeployment


class EvaluationTier(ApiModel):
    """A mid-size model evaluated with the student and the teacher as a cascade: student, these tiers in order,
    the teacher last; the report recommends a threshold for each (a StudentDeployment's router.tiers of the same
    name take it when they leave theirs unset)."""

    name: str = Field(description="Name of the tier, as in a StudentDeployment's router.tiers.",
                      pattern=DNS_LABEL_PATTERN, max_length=63)
    uri: str = Field(description="A sequence-classification model over the same task.labels in the same order "
                     "(its config's id2label), e.g. another job's fp32 `student/` folder.", pattern=MODEL_URI_PATTERN)


class EvaluationSpec(ApiModel):
    """The student-vs-teacher gap evaluation."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.tiers) || self.tiers.all(t, t.name != 'student' && t.name != 'teacher')",
                "evaluation.tiers: the names student and teacher are taken", ".tiers"),
        )
    }

    metrics: list[Metric] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Metrics reported on the eval split. The primary one (accuracy, agreement without labels; "
        "for causal-lm the first of rouge_l, chrf and exact_match listed, else perplexity) drives retention and "
        "the gate and is always reported; rouge_l, chrf and exact_match (causal-lm) score answers the teacher and "
        "the students generate for the held-out prompts, against dataset.referenceField or, without it, the "
        "teacher's answers; `latency` (p50/p95, throughput, speedup) is measured only when listed; other metrics "
        "that do not apply to the task are ignored.",
        max_length=9,
    )
    gate: GateSpec = Field(default_factory=GateSpec, description="The pass/fail gate.")
    routing_target: float = Field(
        default=0.99, description="Share of the teacher's quality the recommended routing threshold keeps.",
        gt=0, le=1,
    )
    max_samples: int | None = Field(default=None, description="Evaluate on at most this many eval rows.", ge=1)
    tiers: list[EvaluationTier] | None = Field(
        default=None, description="Mid-size models between the student and the teacher, in the order requests "
        "climb them (sequence-classification with a local teacher): each is scored on the eval split, and the "
        "report recommends a threshold per model of the cascade (report.json `cascade`, status.results."
        "cascadeThresholds).", max_length=MAX_EVALUATION_TIERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    economics: EconomicsSpec | None = Field(
        default=None, description="Prices and traffic: the report adds the cost per 1M requests of teacher, student "
        "and cascade, the cost ratio, the monthly saving and the job's payback period.")

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: list[EvaluationTier] | None) -> list[EvaluationTier] | None:
        names = [t.name for t in value or []]
        taken = sorted({n for n in names if n in ("student", "teacher") or names.count(n) > 1})
        if taken:
            raise ValueError(f"evaluation.tiers: names {taken} repeat or are taken (student, teacher): give each "
                             "tier its own name")
        return value

    def generation_metric(self) -> Metric | None:
        """The primary metric of a causal LM when it is a generation score: the first one listed."""
        return next((m for m in self.metrics if m in GENERATION_METRICS), None)


class OutputSpec(ApiModel):
    """Where the pipeline writes the student, the Triton model repository and the report."""

    uri: str = Field(
        description="`file:///mnt/out/job`, `s3://bucket/prefix` or `pvc://claim/sub/path`; a run resumes there.",
        pattern=OUTPUT_URI_PATTERN,
    )
    s3_credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_ENDPOINT_URL) for `s3://`.",
        pattern=DNS_SUBDOMAIN_PATTERN,
    )


class RayNodeGroup(ApiModel):
    """The pods of one Ray node group."""

    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU and memory of each pod."
    )


class RayWorkerGroup(RayNodeGroup):
    """Ray workers: one Ray Train worker each."""

    replicas: int = Field(default=1, description="Worker pods (and Ray Train workers).", ge=1, le=1024)
    gpus: int = Field(default=0, description="GPUs per worker (`nvidia.com/gpu`); 0 trains on CPU.", ge=0, le=16)


class RayClusterSpec(ApiModel):
    """The Ray cluster KubeRay starts for the job."""

    image: str | None = Field(
        default=None,
        description="Image of the Ray pods (it holds the pipeline); default: the operator's configured job image.",
        min_length=1,
    )
    ray_version: str = Field(default="2.60.0", description="Ray version in the image.", pattern=r"^\d+\.\d+\.\d+$")
    head: RayNodeGroup = Field(default_factory=RayNodeGroup, description="The head pod.")
    workers: RayWorkerGroup = Field(default_factory=RayWorkerGroup, description="The worker pods.")
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the pods must run on.")
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the pods tolerate.")
    service_account_name: str | None = Field(
        default=None,
        description="ServiceAccount of the pods; by default the operator's own per-job account that may "
        "only report this job's status.",
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    ttl_seconds_after_finished: int = Field(
        default=600, description="Seconds the finished cluster is kept, for logs.", ge=0, le=604800
    )
    backoff_limit: int = Field(default=2, description="Retries of a failed run (each resumes).", ge=0, le=100)
    active_deadline_seconds: int | None = Field(default=None, description="Fail the job after this long.", ge=1)


class DistillationJobSpec(ApiModel):
    """Teach a small student to behave like a big teacher on this data."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("has(self.teacher) != has(self.teachers)",
                "set exactly one of teacher (one teacher) and teachers (several, each with a weight)"),
            cel("!has(self.evaluation.tiers) || (self.task.type == 'sequence-classification' && has(self.teacher) "
                "&& !has(self.teacher.endpoint) && !has(self.teacher.prompt))",
                "evaluation.tiers: a cascade is evaluated for sequence-classification with a local classifier "
                "teacher (teacher.uri or teacher.jobRef, no prompt)", ".evaluation.tiers"),
            cel("!has(self.teachers) || self.teachers.exists(t, t.weight > 0)",
                "teachers: the weights must sum to a positive number: give at least one teacher a weight above 0",
                ".teachers"),
            cel("!has(self.teachers) || self.teachers.all(t, !has(t.jobRef))",
                "teachers[].jobRef: a member of several teachers is a model or an endpoint; chain jobs through "
                "teacher.jobRef", ".teachers"),
            cel("!has(self.teachers) || self.teachers.all(t, !has(t.endpoint) || has(t.prompt))",
                "teachers[].endpoint: an endpoint teacher classifies through a prompt: set its prompt", ".teachers"),
            cel("!has(self.teachers) || (self.task.type == 'sequence-classification' && has(self.student.uri) && "
                "self.distillation.teacherMode == 'cached' && !self.distillation.hiddenStates.enabled && "
                "self.compression.pruning.method == 'none')",
                "teachers: several teachers combine class distributions once: they need task.type "
                "sequence-classification, a pretrained student.uri, distillation.teacherMode cached, no "
                "distillation.hiddenStates and compression.pruning.method none", ".teachers"),
            cel(
                "self.compression.quantization != 'int4' || self.task.type == 'causal-lm'",
                "compression.quantization int4 is for causal-lm students; use int8 for sequence-classification",
                ".compression.quantization",
            ),
            cel(
                "!has(self.teacher) || ("
                "self.task.type != 'causal-lm' || self.distillation.teacherMode == 'online' || "
                "!has(self.teacher.endpoint) || self.distillation.topK <= 20"
                ")",
                "an endpoint teacher exposes at most 20 logprobs: set distillation.topK <= 20",
                ".distillation.topK",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.endpoint) || self.task.type == 'causal-lm' || has(self.teacher.prompt)"
                ")",
                "an endpoint teacher classifies through a prompt: set teacher.prompt for task.type "
                "sequence-classification",
                ".teacher.endpoint",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || self.task.type == 'sequence-classification'"
                ")",
                "teacher.prompt labels texts for sequence-classification; a causal-lm task learns the "
                "teacher's own answers",
                ".teacher.prompt",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || !has(self.teacher.prompt.verbalizer) || "
                "self.teacher.prompt.verbalizer.all(k, has(self.task.labels) && k in self.task.labels)"
                ")",
                "teacher.prompt.verbalizer: every key must be one of task.labels",
                ".teacher.prompt.verbalizer",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || !has(self.teacher.prompt.fewShot) || "
                "self.teacher.prompt.fewShot.all(e, has(self.task.labels) && e.label in self.task.labels)"
                ")",
                "teacher.prompt.fewShot: every example's label must be one of task.labels",
                ".teacher.prompt.fewShot",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || has(self.student.uri)"
                ")",
                "a language-model teacher (teacher.prompt) has no classifier to copy: give a pretrained "
                "student.uri",
                ".student",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || self.distillation.teacherMode == 'cached'"
                ")",
                "a language-model teacher (teacher.prompt) labels the data once: use distillation.teacherMode "
                "cached",
                ".distillation.teacherMode",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || !self.distillation.hiddenStates.enabled"
                ")",
                "hidden-state distillation needs a classifier teacher's features, which teacher.prompt has not",
                ".distillation.hiddenStates.enabled",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.prompt) || self.compression.pruning.method == 'none'"
                ")",
                "pruning's recovery distillation runs a classifier teacher; with teacher.prompt use "
                "compression.pruning.method none",
                ".compression.pruning.method",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.endpoint) || self.distillation.teacherMode == 'cached'"
                ")",
                "an endpoint teacher can only be used in distillation.teacherMode cached",
                ".distillation.teacherMode",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.endpoint) || self.task.type != 'causal-lm' || "
                "self.distillation.loss == 'forward-kl'"
                ")",
                "an endpoint teacher leaves the student's targets sparse (one-hot on the prompt, fewer candidates "
                "than topK), where reverse-kl and jsd, renormalised over the teacher's k tokens, are huge or "
                "constant: use distillation.loss forward-kl",
                ".distillation.loss",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.teacher.endpoint) || self.compression.pruning.method == 'none'"
                ")",
                "pruning is followed by a recovery distillation that needs the teacher's weights, which an "
                "endpoint teacher does not have: use compression.pruning.method none",
                ".compression.pruning.method",
            ),
            cel(
                "!has(self.teacher) || ("
                "!self.distillation.hiddenStates.enabled || !has(self.teacher.endpoint)"
                ")",
                "hidden-state distillation needs a teacher model, not an endpoint",
                ".distillation.hiddenStates.enabled",
            ),
            cel(
                "self.distillation.onPolicy == 0.0 || self.task.type == 'causal-lm'",
                "distillation.onPolicy: on-policy batches sample answers, which needs task.type causal-lm",
                ".distillation.onPolicy",
            ),
            cel(
                "self.distillation.onPolicy == 0.0 || !has(self.teacher) || !has(self.teacher.endpoint)",
                "distillation.onPolicy: the teacher must score the student's own samples token by token, which an "
                "endpoint teacher (teacher.endpoint) cannot: use a local teacher.uri, or onPolicy 0",
                ".distillation.onPolicy",
            ),
            cel(
                "self.distillation.onPolicy == 0.0 || self.distillation.teacherMode == 'online'",
                "distillation.onPolicy needs distillation.teacherMode online: the teacher scores the student's "
                "samples in every step, which no cache holds",
                ".distillation.teacherMode",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.student.fromTeacher) || has(self.teacher.uri) || has(self.teacher.jobRef)"
                ")",
                "student.fromTeacher needs teacher.uri or teacher.jobRef (a model whose layers can be copied)",
                ".student.fromTeacher",
            ),
            cel(
                "!has(self.student.fromTeacher) || !has(self.student.fromTeacher.vocabulary) || "
                "self.student.fromTeacher.vocabulary == 'teacher' || (self.task.type == 'causal-lm' && "
                "self.distillation.teacherMode == 'cached' && self.compression.pruning.method == 'none' && "
                "!self.distillation.hiddenStates.enabled && "
                "self.evaluation.metrics.exists(m, m in ['rouge_l', 'chrf', 'exact_match']))",
                "student.fromTeacher.vocabulary corpus needs task.type causal-lm, distillation.teacherMode cached, "
                "compression.pruning.method none, hiddenStates off (the teacher never reads the student's own "
                "tokens) and a generation metric in evaluation.metrics (perplexities over two tokenizations do "
                "not compare)",
                ".student.fromTeacher.vocabulary",
            ),
            cel(
                "!has(self.teacher) || ("
                "!has(self.student.architecture) || has(self.teacher.uri) || has(self.teacher.jobRef)"
                ")",
                "student.architecture shares the teacher's tokenizer: it needs teacher.uri or teacher.jobRef",
                ".student.architecture",
            ),
            cel(
                "!has(self.distillation.sequenceLevel) || (self.task.type == 'causal-lm' && has(self.teacher.uri) "
                "&& self.distillation.teacherMode == 'cached')",
                "distillation.sequenceLevel needs task.type causal-lm, a local teacher.uri and teacherMode cached "
                "(the teacher answers once; an endpoint teacher always answers the prompts)",
                ".distillation.sequenceLevel",
            ),
            cel(
                "!has(self.task.prompt) || has(self.distillation.sequenceLevel) || has(self.teacher.endpoint)",
                "task.prompt makes each text a prompt to answer: set distillation.sequenceLevel (the teacher "
                "answers them) or use teacher.endpoint",
                ".task.prompt",
            ),
            cel(
                "self.task.type == 'causal-lm' || !self.evaluation.metrics.exists(m, m in ['rouge_l', 'chrf', "
                "'exact_match'])",
                "evaluation.metrics rouge_l, chrf and exact_match score generated answers: they are for causal-lm",
                ".evaluation.metrics",
            ),
            cel(
                "!has(self.teacher.endpoint) || !self.evaluation.metrics.exists(m, m in ['rouge_l', 'chrf', "
                "'exact_match'])",
                "evaluation.metrics rouge_l, chrf and exact_match need a teacher that generates locally "
                "(teacher.uri); with teacher.endpoint use perplexity",
                ".evaluation.metrics",
            ),
        )
    }

    task: TaskSpec = Field(description="What the student learns to do.")
    teacher: TeacherSpec | None = Field(default=None, description="The model that teaches (one teacher; "
                                        "`teachers` for several).")
    teachers: list[EnsembleTeacher] | None = Field(
        default=None,
        description="Several teachers whose class distributions are combined into the soft targets "
        "(distillation.ensemble), each with a weight: classification models and language models labelling "
        "through a prompt, in any mix. Instead of `teacher`.",
        min_length=2,
        max_length=8,
    )
    student: StudentSpec = Field(description="The model that learns.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    distillation: DistillationSpec = Field(default_factory=DistillationSpec, description="The distillation objective.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="The optimisation loop.")
    compression: CompressionSpec = Field(default_factory=CompressionSpec, description="Shrinking for serving.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="The gap evaluation and gate.")
    output: OutputSpec = Field(description="Where artifacts, checkpoints and the report are written.")
    ray: RayClusterSpec = Field(default_factory=RayClusterSpec, description="The Ray cluster that runs the job.")

    @property
    def teacher_job(self) -> JobReference | None:
        """The job whose student teaches this one (teacher.jobRef), if any."""
        return self.teacher.job_ref if self.teacher is not None else None

    @model_validator(mode="after")
    def _cascade_evaluated(self) -> DistillationJobSpec:
        local = self.teacher is not None and self.teacher.endpoint is None and self.teacher.prompt is None
        if self.evaluation.tiers and (self.task.type != "sequence-classification" or not local):
            raise ValueError("evaluation.tiers: a cascade is evaluated for sequence-classification with a local "
                             "classifier teacher (teacher.uri or teacher.jobRef, no prompt); remove "
                             "evaluation.tiers")
        return self

    def all_teachers(self) -> list[tuple[str, TeacherSpec]]:
        """Every teacher with the spec field that holds it: `teacher`, or `teachers[i]` of several."""
        if self.teachers is not None:
            return [(f"teachers[{i}]", t) for i, t in enumerate(self.teachers)]
        return [("teacher", self.teacher)] if self.teacher is not None else []

    @model_validator(mode="after")
    def _cross_field(self) -> DistillationJobSpec:
        if self.compression.quantization == "int4" and self.task.type != "causal-lm":
            raise ValueError(
                "compression.quantization: int4 is for causal-lm students; use int8 for sequence-classification"
            )
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("teachers: set teacher (one teacher) or teachers (several), not both")
        if self.teachers is not None:
            self._check_teachers(self.teachers)
            self._check_generation()
            return self
        if self.teacher is None:
            raise ValueError("teacher: set teacher (the model that teaches), or teachers for several")
        endpoint = self.teacher.endpoint is not None
        if endpoint and self.task.type != "causal-lm" and self.teacher.prompt is None:
            raise ValueError(
                "teacher.endpoint: an endpoint teacher classifies through a prompt: set teacher.prompt for "
                "task.type sequence-classification"
            )
        self._check_prompt()
        self._check_on_policy()
        if endpoint and self.distillation.teacher_mode != "cached":
            raise ValueError("distillation.teacherMode: an endpoint teacher can only be used in cached mode")
        if endpoint and self.task.type == "causal-lm" and self.distillation.top_k > 20:
            raise ValueError("distillation.topK: an endpoint teacher exposes at most 20 logprobs: set topK <= 20")
        if endpoint and self.task.type == "causal-lm" and self.distillation.loss != "forward-kl":
            raise ValueError(
                f"distillation.loss: {self.distillation.loss} renormalises the student over the teacher's k tokens, "
                "which an endpoint teacher (teacher.endpoint) leaves sparse (one-hot prompt targets, fewer "
                "candidates than topK): the loss there is huge or constant; use forward-kl"
            )
        if endpoint and self.compression.pruning.method != "none":
            raise ValueError(
                "compression.pruning.method: pruning is followed by a recovery distillation that needs the "
                "teacher's weights; an endpoint teacher (teacher.endpoint) has none: use method none"
            )
        if endpoint and self.distillation.hidden_states.enabled:
            raise ValueError("distillation.hiddenStates.enabled: hidden-state distillation needs a teacher model")
        if endpoint and (self.student.from_teacher or self.student.architecture):
            raise ValueError(
                "student: fromTeacher and architecture derive the student from teacher.uri; "
                "with an endpoint teacher give student.uri"
            )
        self._check_generation()
        self._check_vocabulary()
        return self

    def _check_vocabulary(self) -> None:
        derived = self.student.from_teacher
        if derived is None or derived.vocabulary == "teacher":
            return
        needs = {"task.type causal-lm": self.task.type == "causal-lm",
                 "distillation.teacherMode cached": self.distillation.teacher_mode == "cached",
                 "compression.pruning.method none": self.compression.pruning.method == "none",
                 "distillation.hiddenStates.enabled false": not self.distillation.hidden_states.enabled,
                 "a generation metric (rouge_l, chrf or exact_match) in evaluation.metrics":
                     self.evaluation.generation_metric() is not None}
        unmet = [field for field, ok in needs.items() if not ok]
        if unmet:
            raise ValueError(
                "student.fromTeacher.vocabulary: corpus trims the student's vocabulary to the training data's "
                "tokens and maps the teacher's cached soft targets onto it; the teacher never reads the student's "
                "own tokens, and perplexities over two tokenizations do not compare, so it needs "
                f"{', '.join(needs)}: change {', '.join(unmet)}, or use vocabulary teacher")

    def _check_teachers(self, teachers: list[EnsembleTeacher]) -> None:
        """Several teachers: each classifies (a model, or a language model through a prompt) and the
        combination is computed once, before training, over the task's labels."""
        if sum(t.weight for t in teachers) <= 0:
            raise ValueError("teachers: the weights must sum to a positive number: give at least one teacher a "
                             "weight above 0")
        needs = {"task.type": self.task.type == "sequence-classification",
                 "student.uri": self.student.uri is not None,
                 "distillation.teacherMode": self.distillation.teacher_mode == "cached",
                 "distillation.hiddenStates.enabled": not self.distillation.hidden_states.enabled,
                 "compression.pruning.method": self.compression.pruning.method == "none"}
        unmet = [field for field, ok in needs.items() if not ok]
        if unmet:
            raise ValueError(f"teachers: several teachers combine class distributions once, which needs task.type "
                             "sequence-classification, a pretrained student.uri, teacherMode cached, no hidden-state "
                             f"distillation and no pruning; change {', '.join(unmet)}")
        keyed = [i for i, t in enumerate(teachers) if t.endpoint is not None and t.endpoint.api_key_secret_ref]
        if len(keyed) > 1:
            raise ValueError(f"teachers[{keyed[1]}].endpoint.apiKeySecretRef: one endpoint teacher at most may "
                             "carry an API key")
        for i, member in enumerate(teachers):
            where = f"teachers[{i}]"
            if member.job_ref is not None:
                raise ValueError(f"{where}.jobRef: a member of several teachers is a model or an endpoint; chain "
                                 "jobs through teacher.jobRef")
            if member.endpoint is not None and member.prompt is None:
                raise ValueError(f"{where}.endpoint: an endpoint teacher classifies through a prompt: set "
                                 f"{where}.prompt")
            self._check_labels(member.prompt, where)

    def _check_labels(self, prompt: TeacherPrompt | None, where: str) -> None:
        labels = self.task.labels or []
        unknown = sorted(set((prompt.verbalizer if prompt else None) or {}) - set(labels))
        if unknown:
            raise ValueError(f"{where}.prompt.verbalizer: {unknown} are not in task.labels {labels}")
        strays = sorted({e.label for e in (prompt.few_shot if prompt else None) or []} - set(labels))
        if strays:
            raise ValueError(f"{where}.prompt.fewShot: labels {strays} are not in task.labels {labels}")

    def _check_generation(self) -> None:
        if self.distillation.sequence_level is not None and (
                self.task.type != "causal-lm" or self.teacher is None or self.teacher.uri is None
                or self.distillation.teacher_mode != "cached"):
            raise ValueError("distillation.sequenceLevel: needs task.type causal-lm, a local teacher.uri and "
                             "teacherMode cached (the teacher answers once; an endpoint teacher always answers "
                             "the prompts)")
        if self.task.prompt is not None and self.distillation.sequence_level is None and (
                self.teacher is None or self.teacher.endpoint is None):
            raise ValueError("task.prompt: makes each text a prompt to answer; set distillation.sequenceLevel (the "
                             "teacher answers them) or use teacher.endpoint")
        listed = [m for m in self.evaluation.metrics if m in GENERATION_METRICS]
        if listed and self.task.type != "causal-lm":
            raise ValueError(f"evaluation.metrics: {', '.join(listed)} score generated answers: they are for "
                             "causal-lm")
        if listed and self.teacher is not None and self.teacher.endpoint is not None:
            raise ValueError(f"evaluation.metrics: {', '.join(listed)} need a teacher that generates locally "
                             "(teacher.uri); with teacher.endpoint use perplexity")

    def _check_on_policy(self) -> None:
        if self.distillation.on_policy == 0:
            return
        if self.task.type != "causal-lm":
            raise ValueError("distillation.onPolicy: on-policy batches sample answers, which needs task.type "
                             "causal-lm; set onPolicy 0")
        if self.teacher is not None and self.teacher.endpoint is not None:
            raise ValueError(
                "distillation.onPolicy: the teacher must score the student's own samples token by token, which an "
                "endpoint teacher (teacher.endpoint) cannot (it returns logprobs of its own answers only): use a "
                "local teacher.uri, or onPolicy 0"
            )
        if self.distillation.teacher_mode != "online":
            raise ValueError(
                "distillation.teacherMode: on-policy batches (distillation.onPolicy > 0) need the teacher to score "
                "the student's samples in every step, which no cache holds: use teacherMode online, or onPolicy 0"
            )

    def _check_prompt(self) -> None:
        assert self.teacher is not None
        prompt = self.teacher.prompt
        if prompt is None:
            return
        if self.task.type != "sequence-classification":
            raise ValueError("teacher.prompt: labels texts for sequence-classification; a causal-lm task learns "
                             "the teacher's own answers (remove teacher.prompt)")
        self._check_labels(prompt, "teacher")
        if self.student.uri is None:
            raise ValueError("student: a language-model teacher (teacher.prompt) has no classifier to copy: give a "
                             "pretrained student.uri")
        if self.distillation.teacher_mode != "cached":
            raise ValueError("distillation.teacherMode: a language-model teacher (teacher.prompt) labels the data "
                             "once: use cached")
        if self.distillation.hidden_states.enabled:
            raise ValueError("distillation.hiddenStates.enabled: needs a classifier teacher's features, which "
                             "teacher.prompt has not")
        if self.compression.pruning.method != "none":
            raise ValueError("compression.pruning.method: pruning's recovery distillation runs a classifier "
                             "teacher; with teacher.prompt use none")


class JobProgress(ApiModel):
    """Where a running job is."""

    stage: str | None = Field(default=None, description="Current stage (data, teacher, soft-targets, train, ...).")
    percent: float | None = Field(default=None, description="Overall progress, 0-100.", ge=0, le=100)
    step: int | None = Field(default=None, description="Training step reached.", ge=0)
    total_steps: int | None = Field(default=None, description="Training steps planned.", ge=0)
    estimated_remaining_seconds: int | None = Field(default=None, description="Estimated time left.", ge=0)


class JobResults(ApiModel):
    """The headline results of a finished job (the full report is `reportUri`)."""

    retention: float | None = Field(default=None, description="Quantized student's quality over the teacher's.")
    agreement: float | None = Field(default=None, description="Share of eval items where student and teacher agree.")
    speedup: float | None = Field(default=None, description="Teacher p50 latency over the quantized student's.")
    generation_speedup: float | None = Field(
        default=None, description="Causal LM: the quantized student's tokens/s over the teacher's, each generating "
        "the held-out answers (report.json generation.speedup).")
    compression: float | None = Field(default=None, description="Teacher size over the quantized student's size.")
    teacher_metric: float | None = Field(default=None, description="Teacher's primary metric on the eval split.")
    student_metric: float | None = Field(default=None, description="Quantized student's primary metric.")
    recommended_threshold: float | None = Field(
        default=None, description="Routing threshold the job recommends, for the max-probability signal."
    )
    recommended_thresholds: dict[str, float] | None = Field(
        default=None,
        description="Recommended routing threshold per confidence signal (max-probability, margin, entropy), "
        "for a StudentDeployment whose router uses another signal than max-probability.",
    )
    escalation_rate: float | None = Field(default=None, description="Share escalated at the recommended threshold.")
    cascade_thresholds: dict[str, float] | None = Field(
        default=None, description="evaluation.tiers: the thresholds recommended for the cascade evaluated together "
        "(max-probability), by model: `student` and each tier's name; a StudentDeployment's router.tiers that leave "
        "a threshold unset take these.")
    cost_ratio: float | None = Field(
        default=None, description="Teacher-only cost per request over the cascade's at the recommended threshold "
        "(evaluation.economics; e.g. 12 = twelve times cheaper).")
    payback_days: float | None = Field(
        default=None, description="Days of the stated traffic whose saving pays for the job (evaluation.economics).")
    gate_passed: bool | None = Field(default=None, description="Whether the evaluation gate passed.")
    artifact_uri: str | None = Field(default=None, description="URI of the Triton model repository.")
    report_uri: str | None = Field(default=None, description="URI of report.json.")
    model_version: str | None = Field(default=None, description="Version of the exported model (a run id).")
    capture_gain: float | None = Field(default=None, description="dataset.capture: the new student's agreement with "
                                       "the teacher on held-out captured traffic minus the serving student's.")
    cross_tokenizer: CrossTokenizer | None = Field(
        default=None, description="Set when the student's tokenizer differs from the teacher's: the method used "
        "instead of logit KD (`sequence-kd`: the teacher's answers as text; `uld`: plus sorted-distribution "
        "distillation).",
    )

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> JobResults | None:
        """`status.results` as the API server holds it (camelCase), or None when the pipeline reported none."""
        results = status.get("results")
        return cls.model_validate(results) if results else None


class JobFailure(ApiModel):
    """A failure the pipeline reported from inside its run (the RayJob alone would only say "exit code 1")."""

    stage: str | None = Field(default=None, description="Where it failed: load, prepare, or a pipeline stage "
                              "(data, teacher, soft-targets, train, compress, evaluate, export).")
    error: str | None = Field(default=None, description="The kind of error (e.g. PreflightError, DataError).")
    message: str = Field(description="What went wrong, naming the spec field to fix for an input error.",
                         max_length=32768)
    permanent: bool = Field(
        description="True: the job's input cannot work as given (preflight, data, model or spec error); the "
        "run's retries are stopped and the job fails until its spec changes. False: a transient failure "
        "(lost node, out of memory, network), left to the RayJob's backoffLimit retries.",
    )
    ray_job_name: str | None = Field(default=None, description="The run (RayJob) that failed; a failure of "
                                     "an earlier run is ignored.")
    time: datetime | None = Field(default=None, description="When the pipeline reported it.")


class DistillationJobStatus(ApiModel):
    """Observed state of a DistillationJob."""

    phase: JobPhase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] | None = Field(
        default=None, description="Observed conditions, keyed by type.", json_schema_extra=CONDITIONS_LIST
    )
    observed_generation: int | None = Field(default=None, description="Generation last acted on.", ge=0)
    ray_job_name: str | None = Field(default=None, description="Name of the KubeRay RayJob running the pipeline.")
    config_map_name: str | None = Field(default=None, description="Name of the ConfigMap with the resolved spec.")
    service_account_name: str | None = Field(default=None, description="ServiceAccount the pipeline reports with.")
    start_time: datetime | None = Field(default=None, description="When the pipeline started.")
    completion_time: datetime | None = Field(default=None, description="When the pipeline finished.")
    attempt: int | None = Field(default=None, description="Run attempt (RayJob retries resume).", ge=0)
    progress: JobProgress | None = Field(default=None, description="Live progress.")
    metrics: dict[str, float] | None = Field(default=None, description="Live metrics (loss, eval accuracy, ...).")
    results: JobResults | None = Field(default=None, description="Results, once the job has finished.")
    failure: JobFailure | None = Field(default=None, description="The last failure the pipeline reported.")
    teacher_uri: str | None = Field(
        default=None, description="The teacher the run uses, resolved from spec.teacher.jobRef (that job's "
        "student, under its spec.output.uri)."
    )


class DistillationJob(ApiModel):
    """A DistillationJob manifest, as `kubectl apply` and `kubedistill run` read it."""

    api_version: Literal["kubedistill.io/v1alpha1"] = Field(default="kubedistill.io/v1alpha1",
                                                            description="API version.")
    kind: Literal["DistillationJob"] = Field(default="DistillationJob", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: DistillationJobSpec = Field(description="Desired state.")
    status: DistillationJobStatus | None = Field(default=None, description="Observed state.")

    @model_validator(mode="after")
    def _not_its_own_teacher(self) -> DistillationJob:
        ref = self.spec.teacher_job
        if ref is not None and ref.name == self.metadata.name:
            raise ValueError(f"spec.teacher.jobRef.name: {ref.name!r} is this job itself; name the job whose "
                             "student teaches this one")
        return self
