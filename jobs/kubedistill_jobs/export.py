"""The Triton model repository: the quantized student (and optionally the fp32 teacher for colocated
escalation) as `onnxruntime_onnx` models, their tokenizers, and `serving.json` for the router.

Layout and names: kubedistill.artifacts. Every config.pbtxt is derived from the ONNX graph it serves, so
names, types and dims cannot drift apart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import (
    CHAT_TEMPLATE_FILE,
    STUDENT_MODEL,
    TEACHER_MODEL,
    OutputLayout,
    ServedModel,
    ServingManifest,
)
from kubedistill.report import Report
from kubedistill_jobs.onnx_export import INPUT_NAMES, OUTPUT_NAME, TensorSpec, graph_signature

# Files a tokenizer folder may hold; the router needs tokenizer.json, the rest keeps transformers happy.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
)
_TRITON_TYPES = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16"}


def _dims(spec: TensorSpec, model: str) -> list[int]:
    """Triton dims: the graph's shape without the leading batch axis (Triton adds it when max_batch_size > 0)."""
    if len(spec.dims) < 2 or spec.dims[0] != -1:
        raise ValueError(f"{model}: tensor {spec.name} has shape {spec.dims}; expected a dynamic batch axis first")
    return list(spec.dims[1:])


def _tensor_block(spec: TensorSpec, model: str) -> str:
    if spec.dtype not in _TRITON_TYPES:
        raise ValueError(f"{model}: tensor {spec.name} has type {spec.dtype}, which has no Triton mapping here")
    dims = ", ".join(str(d) for d in _dims(spec, model))
    return f'  {{\n    name: "{spec.name}"\n    data_type: {_TRITON_TYPES[spec.dtype]}\n    dims: [ {dims} ]\n  }}'


def render_config(
    name: str, onnx_path: Path, *, max_batch_size: int = 32, dynamic_batching: bool = True,
    max_queue_delay_us: int = 1000,
) -> str:
    """config.pbtxt (Triton's ModelConfig in protobuf text format) for the ONNX graph at `onnx_path`.

    No instance_group: Triton then places the model on the GPUs it finds, else on the CPU.
    """
    inputs, outputs = graph_signature(onnx_path)
    if [i.name for i in inputs] != list(INPUT_NAMES) or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ValueError(
            f"{name}: ONNX graph {onnx_path} has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in outputs]}; expected {list(INPUT_NAMES)} → [{OUTPUT_NAME!r}] "
            " (export it with export_onnx)"
        )
    if max_batch_size < 1:
        raise ValueError(f"{name}: max_batch_size must be at least 1, got {max_batch_size}")
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor_block(i, name) for i in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(o, name) for o in outputs) + "\n]",
    ]
    if dynamic_batching:
        preferred = sorted({b for b in (4, 8, 16, 32, max_batch_size) if b <= max_batch_size})
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
            f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
            "}"
        )
    return "\n".join(lines) + "\n"


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of `src` into `dst`; tokenizer.json (what the router loads) is required."""
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{src} has no tokenizer.json: save a fast tokenizer there (tokenizer.save_pretrained) before export"
        )
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _copy_onnx(src: Path, version_dir: Path) -> None:
    """model.onnx, plus its external-data file when the graph keeps weights beside it (models over 2 GB)."""
    import onnx

    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, version_dir / "model.onnx")
    graph = onnx.load(str(src), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and (src.parent / entry.value).is_file():
                shutil.copy2(src.parent / entry.value, version_dir / entry.value)


def _write_model(
    repo: Path, name: str, onnx_path: Path, tokenizer_dir: Path | None, labels: list[str] | None,
    max_batch_size: int, dynamic_batching: bool,
) -> ServedModel:
    model_dir = repo / name
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a re-export replaces the model whole, never mixes versions
    config = render_config(name, onnx_path, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching)
    _copy_onnx(Path(onnx_path), model_dir / "1")
    (model_dir / "config.pbtxt").write_text(config)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), model_dir)
    if labels:
        (model_dir / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return ServedModel(name=name, inputs=list(INPUT_NAMES), output=OUTPUT_NAME, max_batch_size=max_batch_size)


def _same_tokenizer(a: Path, b: Path) -> bool:
    return (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def write_model_repository(
    repo: Path,
    *,
    task: str,
    labels: list[str] | None,
    max_length: int,
    student_onnx: Path,
    tokenizer_dir: Path,
    teacher_onnx: Path | None = None,
    teacher_tokenizer_dir: Path | None = None,
    max_batch_size: int = 32,
    dynamic_batching: bool = True,
    recommended_threshold: float | None = None,
    confidence_signal: str = "max-probability",
    cascade_thresholds: dict[str, float] | None = None,
    model_version: str,
) -> ServingManifest:
    """Write a Triton model repository at `repo` and its serving.json; returns the manifest.

    The teacher's tokenizer goes into teacher/ and is named in the manifest only when it differs from
    the student's (a student that shares the teacher's vocabulary needs one tokenizer).
    """
    repo = Path(repo)
    if task == "sequence-classification" and (not labels or len(labels) < 2):
        raise ValueError("task.labels: a classification model repository needs at least two labels")
    if teacher_tokenizer_dir is not None and teacher_onnx is None:
        raise ValueError("teacher_tokenizer_dir given without teacher_onnx")
    repo.mkdir(parents=True, exist_ok=True)
    model_labels = labels if task == "sequence-classification" else None
    student = _write_model(repo, STUDENT_MODEL, student_onnx, tokenizer_dir, model_labels, max_batch_size,
                           dynamic_batching)
    teacher = None
    teacher_tokenizer = None
    if teacher_onnx is not None:
        own_tokenizer = teacher_tokenizer_dir is not None and not _same_tokenizer(
            Path(tokenizer_dir), Path(teacher_tokenizer_dir)
        )
        teacher = _write_model(repo, TEACHER_MODEL, teacher_onnx, teacher_tokenizer_dir if own_tokenizer else None,
                               model_labels, max_batch_size, dynamic_batching)
        teacher_tokenizer = TEACHER_MODEL if own_tokenizer else None
    elif (repo / TEACHER_MODEL).exists():
        shutil.rmtree(repo / TEACHER_MODEL)  # a stale teacher from an earlier export must not be served
    manifest = ServingManifest(
        task=task,  # type: ignore[arg-type]
        labels=model_labels,
        max_length=max_length,
        tokenizer=STUDENT_MODEL,
        student=student,
        teacher=teacher,
        teacher_tokenizer=teacher_tokenizer,
        recommended_threshold=recommended_threshold,
        confidence_signal=confidence_signal,  # type: ignore[arg-type]
        cascade_thresholds=cascade_thresholds,
        model_version=model_version,
    )
    manifest.write(repo)
    return manifest


def write_generation_repository(
    repo: Path,
    *,
    max_length: int,
    student_folder: Path,
    precision: str,
    work: Path,
    teacher_folder: Path | None = None,
    teacher_precision: str = "fp32",
    recommended_threshold: float | None = None,
    confidence_signal: str = "token-quantile",
    system_prompt: str | None = None,
    model_version: str,
) -> ServingManifest:
    """A causal-LM model repository at `repo`: the student (and a local teacher) built for generation
    (genai_export), the student's chat template, serving.json (with `system_prompt`, the system turn the
    student was trained with, when the student has a chat template). `work` keeps the GenAI builds.

    The teacher is built at `teacher_precision` (default fp32: the model the evaluation compared against).
    """
    from kubedistill_jobs.genai_export import build_and_write, chat_template

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    student = build_and_write(repo, STUDENT_MODEL, Path(student_folder), precision, work)
    teacher = None
    if teacher_folder is not None:
        teacher = build_and_write(repo, TEACHER_MODEL, Path(teacher_folder), teacher_precision, work)
    elif (repo / TEACHER_MODEL).exists():
        shutil.rmtree(repo / TEACHER_MODEL)
    has_template = chat_template(repo / STUDENT_MODEL) is not None
    own_tokenizer = teacher is not None and not _same_tokenizer(repo / STUDENT_MODEL, repo / TEACHER_MODEL)
    manifest = ServingManifest(
        task="causal-lm",
        max_length=max_length,
        tokenizer=STUDENT_MODEL,
        student=student,
        teacher=teacher,
        teacher_tokenizer=TEACHER_MODEL if own_tokenizer else None,
        recommended_threshold=recommended_threshold,
        confidence_signal=confidence_signal,  # type: ignore[arg-type]
        chat_template=f"{STUDENT_MODEL}/{CHAT_TEMPLATE_FILE}" if has_template else None,
        system_prompt=system_prompt if has_template else None,
        model_version=model_version,
    )
    manifest.write(repo)
    return manifest


def export(spec: DistillationJobSpec, layout: OutputLayout, report: Report) -> ServingManifest:
    """The job's model repository: the served (quantized) student, the fp32 teacher, the report's threshold.

    A causal-LM job's repository holds generation models (genai_export); the threshold is the one the
    generation frontier recommends (report.generation_routing), for its token-level signal.
    """
    from kubedistill_jobs.compress import CompressionResult

    if spec.task.type == "causal-lm":
        from kubedistill_jobs.genai_export import precision_for

        result = CompressionResult.read(layout)
        generation = report.generation_routing
        return write_generation_repository(
            layout.model_repository,
            max_length=spec.task.max_length,
            student_folder=layout.student,
            precision=precision_for(spec.compression.quantization),
            work=layout.genai,
            teacher_folder=layout.teacher if result.teacher_onnx else None,
            recommended_threshold=generation.recommended_threshold if generation else None,
            confidence_signal=generation.signal if generation else "token-quantile",
            # The training prompts' rule (task_prompt.render, chats.render): the task's system turn, else an empty
            # one, never the chat template's default.
            system_prompt=(spec.task.prompt.system if spec.task.prompt is not None else None) or "",
            model_version=report.model_version or "0",
        )

    result = CompressionResult.read(layout)
    routing = report.routing
    return write_model_repository(
        layout.model_repository,
        task=spec.task.type,
        labels=spec.task.labels,
        max_length=spec.task.max_length,
        student_onnx=result.served_path(layout),
        tokenizer_dir=layout.student,
        teacher_onnx=result.teacher_path(layout),
        teacher_tokenizer_dir=layout.teacher if result.teacher_onnx else None,
        recommended_threshold=routing.recommended_threshold if routing else None,
        confidence_signal=routing.signal if routing else "max-probability",
        cascade_thresholds=report.cascade.recommended_thresholds() if report.cascade else None,
        model_version=report.model_version or "0",
    )
