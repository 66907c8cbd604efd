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
    CONDITIONS_LIST,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Condition,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
    cel,
    cel_rules,
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
EndpointApi = Literal["chat", "completions"]
LabelEncoding = Literal["name", "index"]
Quantization = Literal["none", "int8", "int4"]
PruningMethod = Literal["none", "layers", "heads"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Metric = Literal["accuracy", "macro_f1", "agreement", "kl", "perplexity", "latency"]
DEFAULT_METRICS: tuple[Metric, ...] = ("accuracy", "macro_f1", "agreement", "kl", "latency")
JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class TaskSpec(ApiModel):
    """What the student learns to do."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "self.type != 'sequence-classification' || (has(self.labels) && size(self.labels) >= 2)",
                "sequence-classification needs at least two task.labels",
                ".labels",
            ),
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
    """The model that teaches: a model URI, or a remote endpoint."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("has(self.uri) != has(self.endpoint)", "set exactly one of teacher.uri and teacher.endpoint"),
        )
    }

    uri: str | None = Field(
        default=None,
        description="Model location: `pkg://`, `hf://`, `s3://`, `file://`, `pvc://` or an absolute path.",
        pattern=MODEL_URI_PATTERN,
    )
    gguf_file: str | None = Field(default=None, description="GGUF file inside `uri` to load (quantized checkpoints).")
    endpoint: TeacherEndpoint | None = Field(default=None, description="A remote OpenAI-compatible teacher.")
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
        if (self.uri is None) == (self.endpoint is None):
            raise ValueError("teacher: set exactly one of teacher.uri (a model) and teacher.endpoint (a remote API)")
        return self


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
    """A student made of a subset of the teacher's layers (DistilBERT-style initialisation)."""

    layers: list[int] | None = Field(
        default=None,
        description="Teacher layer indices to keep, in order. Default: every other layer.",
        min_length=1,
        max_length=128,
    )


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


class HiddenStateDistillation(ApiModel):
    """Feature distillation: match the student's hidden states to the teacher's through a learned projection."""

    enabled: bool = Field(default=False, description="Add the hidden-state loss.")
    weight: float = Field(default=1.0, description="Weight of the hidden-state loss.", ge=0, le=100)


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
    teacher_outputs_uri: str | None = Field(
        default=None,
        description="A `teacher_outputs/` folder of an earlier job: reuse what its teacher produced instead of "
        "calling the teacher again.",
        pattern=DATA_URI_PATTERN,
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
        default="auto", description="`auto` uses bf16 on GPUs that support it and fp32 on CPU."
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


class EvaluationSpec(ApiModel):
    """The student-vs-teacher gap evaluation."""

    metrics: list[Metric] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Metrics reported on the eval split. The primary one (accuracy, agreement without labels, "
        "perplexity for causal-lm) is always reported; `latency` (p50/p95, throughput, speedup) is measured only "
        "when listed; metrics that do not apply to the task are ignored.",
        max_length=6,
    )
    gate: GateSpec = Field(default_factory=GateSpec, description="The pass/fail gate.")
    routing_target: float = Field(
        default=0.99, description="Share of the teacher's quality the recommended routing threshold keeps.",
        gt=0, le=1,
    )
    max_samples: int | None = Field(default=None, description="Evaluate on at most this many eval rows.", ge=1)


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
            cel(
                "self.compression.quantization != 'int4' || self.task.type == 'causal-lm'",
                "compression.quantization int4 is for causal-lm students; use int8 for sequence-classification",
                ".compression.quantization",
            ),
            cel(
                "self.task.type != 'causal-lm' || self.distillation.teacherMode == 'online' || "
                "!has(self.teacher.endpoint) || self.distillation.topK <= 20",
                "an endpoint teacher exposes at most 20 logprobs: set distillation.topK <= 20",
                ".distillation.topK",
            ),
            cel(
                "!has(self.teacher.endpoint) || self.task.type == 'causal-lm' || has(self.teacher.prompt)",
                "an endpoint teacher classifies through a prompt: set teacher.prompt for task.type "
                "sequence-classification",
                ".teacher.endpoint",
            ),
            cel(
                "!has(self.teacher.prompt) || self.task.type == 'sequence-classification'",
                "teacher.prompt labels texts for sequence-classification; a causal-lm task learns the "
                "teacher's own answers",
                ".teacher.prompt",
            ),
            cel(
                "!has(self.teacher.prompt) || !has(self.teacher.prompt.verbalizer) || "
                "self.teacher.prompt.verbalizer.all(k, has(self.task.labels) && k in self.task.labels)",
                "teacher.prompt.verbalizer: every key must be one of task.labels",
                ".teacher.prompt.verbalizer",
            ),
            cel(
                "!has(self.teacher.prompt) || !has(self.teacher.prompt.fewShot) || "
                "self.teacher.prompt.fewShot.all(e, has(self.task.labels) && e.label in self.task.labels)",
                "teacher.prompt.fewShot: every example's label must be one of task.labels",
                ".teacher.prompt.fewShot",
            ),
            cel(
                "!has(self.teacher.prompt) || has(self.student.uri)",
                "a language-model teacher (teacher.prompt) has no classifier to copy: give a pretrained "
                "student.uri",
                ".student",
            ),
            cel(
                "!has(self.teacher.prompt) || self.distillation.teacherMode == 'cached'",
                "a language-model teacher (teacher.prompt) labels the data once: use distillation.teacherMode "
                "cached",
                ".distillation.teacherMode",
            ),
            cel(
                "!has(self.teacher.prompt) || !self.distillation.hiddenStates.enabled",
                "hidden-state distillation needs a classifier teacher's features, which teacher.prompt has not",
                ".distillation.hiddenStates.enabled",
            ),
            cel(
                "!has(self.teacher.prompt) || self.compression.pruning.method == 'none'",
                "pruning's recovery distillation runs a classifier teacher; with teacher.prompt use "
                "compression.pruning.method none",
                ".compression.pruning.method",
            ),
            cel(
                "!has(self.teacher.endpoint) || self.distillation.teacherMode == 'cached'",
                "an endpoint teacher can only be used in distillation.teacherMode cached",
                ".distillation.teacherMode",
            ),
            cel(
                "!has(self.teacher.endpoint) || self.task.type != 'causal-lm' || "
                "self.distillation.loss == 'forward-kl'",
                "an endpoint teacher leaves the student's targets sparse (one-hot on the prompt, fewer candidates "
                "than topK), where reverse-kl and jsd, renormalised over the teacher's k tokens, are huge or "
                "constant: use distillation.loss forward-kl",
                ".distillation.loss",
            ),
            cel(
                "!has(self.teacher.endpoint) || self.compression.pruning.method == 'none'",
                "pruning is followed by a recovery distillation that needs the teacher's weights, which an "
                "endpoint teacher does not have: use compression.pruning.method none",
                ".compression.pruning.method",
            ),
            cel(
                "!self.distillation.hiddenStates.enabled || !has(self.teacher.endpoint)",
                "hidden-state distillation needs a teacher model, not an endpoint",
                ".distillation.hiddenStates.enabled",
            ),
            cel(
                "!has(self.student.fromTeacher) || has(self.teacher.uri)",
                "student.fromTeacher needs teacher.uri (a model whose layers can be copied)",
                ".student.fromTeacher",
            ),
            cel(
                "!has(self.student.architecture) || has(self.teacher.uri)",
                "student.architecture shares the teacher's tokenizer: it needs teacher.uri",
                ".student.architecture",
            ),
        )
    }

    task: TaskSpec = Field(description="What the student learns to do.")
    teacher: TeacherSpec = Field(description="The model that teaches.")
    student: StudentSpec = Field(description="The model that learns.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    distillation: DistillationSpec = Field(default_factory=DistillationSpec, description="The distillation objective.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="The optimisation loop.")
    compression: CompressionSpec = Field(default_factory=CompressionSpec, description="Shrinking for serving.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="The gap evaluation and gate.")
    output: OutputSpec = Field(description="Where artifacts, checkpoints and the report are written.")
    ray: RayClusterSpec = Field(default_factory=RayClusterSpec, description="The Ray cluster that runs the job.")

    @model_validator(mode="after")
    def _cross_field(self) -> DistillationJobSpec:
        if self.compression.quantization == "int4" and self.task.type != "causal-lm":
            raise ValueError(
                "compression.quantization: int4 is for causal-lm students; use int8 for sequence-classification"
            )
        endpoint = self.teacher.endpoint is not None
        if endpoint and self.task.type != "causal-lm" and self.teacher.prompt is None:
            raise ValueError(
                "teacher.endpoint: an endpoint teacher classifies through a prompt: set teacher.prompt for "
                "task.type sequence-classification"
            )
        self._check_prompt()
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
        return self

    def _check_prompt(self) -> None:
        prompt = self.teacher.prompt
        if prompt is None:
            return
        if self.task.type != "sequence-classification":
            raise ValueError("teacher.prompt: labels texts for sequence-classification; a causal-lm task learns "
                             "the teacher's own answers (remove teacher.prompt)")
        labels = self.task.labels or []
        unknown = sorted(set(prompt.verbalizer or {}) - set(labels))
        if unknown:
            raise ValueError(f"teacher.prompt.verbalizer: {unknown} are not in task.labels {labels}")
        strays = sorted({e.label for e in prompt.few_shot or []} - set(labels))
        if strays:
            raise ValueError(f"teacher.prompt.fewShot: labels {strays} are not in task.labels {labels}")
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
    gate_passed: bool | None = Field(default=None, description="Whether the evaluation gate passed.")
    artifact_uri: str | None = Field(default=None, description="URI of the Triton model repository.")
    report_uri: str | None = Field(default=None, description="URI of report.json.")
    model_version: str | None = Field(default=None, description="Version of the exported model (a run id).")

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


class DistillationJob(ApiModel):
    """A DistillationJob manifest, as `kubectl apply` and `kubedistill run` read it."""

    api_version: Literal["kubedistill.io/v1alpha1"] = Field(default="kubedistill.io/v1alpha1",
                                                            description="API version.")
    kind: Literal["DistillationJob"] = Field(default="DistillationJob", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: DistillationJobSpec = Field(description="Desired state.")
    status: DistillationJobStatus | None = Field(default=None, description="Observed state.")
