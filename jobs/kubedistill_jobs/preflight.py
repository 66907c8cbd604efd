"""Checks a job can run before any compute is spent: every problem is an error naming the field and the fix.

A rule that needs only the spec lives in the API models (`kubedistill.api`, with its CEL twin in the CRD, so
that `kubectl apply` refuses it); these checks need the run, the models or the data themselves.
"""

from __future__ import annotations

from typing import Any

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.errors import InputError
from kubedistill_jobs import models


class PreflightError(InputError):
    """A job that cannot run as specified."""


def check_spec(spec: DistillationJobSpec, workers: int) -> None:
    """Checks on the spec against this run: `workers` is the run's Ray Train worker count, which
    `kubedistill run --workers` may set apart from `ray.workers.replicas`."""
    if spec.training.batch_size < workers:
        raise PreflightError(
            f"training.batchSize: {spec.training.batch_size} is smaller than the {workers} training workers; "
            "each worker needs at least one example per step"
        )


def check_models(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """Teacher and student exist; a causal-lm student shares the teacher's vocabulary; k ≤ vocabulary.
    Returns the loaded teacher tokenizer (and the student's, when it has its own)."""
    if spec.teacher.endpoint is not None:
        if spec.teacher.prompt is not None:  # before any request: first-token logprobs must tell labels apart
            from kubedistill_jobs import chat_teacher, llm_teacher

            chat_teacher.check_first_characters(llm_teacher.LabelPrompt.from_spec(spec).answers)
        return _check_endpoint_student(spec, layout)
    assert spec.teacher.uri is not None
    teacher_source = models.model_source(spec.teacher.uri, "teacher.uri", layout.downloads / "teacher")
    models.check_model_files(teacher_source, "teacher.uri", spec.teacher.gguf_file)
    try:
        teacher_tokenizer = models.load_tokenizer(teacher_source, spec.teacher.gguf_file)
    except Exception as error:
        raise PreflightError(f"teacher.uri: cannot load the tokenizer of {teacher_source}: {error}") from None
    found: dict[str, Any] = {"teacher_source": teacher_source, "teacher_tokenizer": teacher_tokenizer}
    if spec.teacher.prompt is not None:
        _check_language_model_teacher(spec, teacher_source, teacher_tokenizer)
    if spec.student.uri is not None:
        _, student_tokenizer = _student_tokenizer(spec.student.uri, layout)
        found["student_tokenizer"] = student_tokenizer
        if spec.task.type == "causal-lm":
            models.check_shared_vocabulary(student_tokenizer, teacher_tokenizer, "student.uri")
    if spec.task.type == "causal-lm":
        vocab = len(teacher_tokenizer)
        if spec.distillation.top_k > vocab:
            raise PreflightError(
                f"distillation.topK: {spec.distillation.top_k} is larger than the teacher's vocabulary ({vocab})"
            )
    return found


def _student_tokenizer(uri: str, layout: OutputLayout) -> tuple[str, Any]:
    """Where a pretrained student (`student.uri`) is, fetched into the output's downloads, and its tokenizer."""
    source = models.model_source(uri, "student.uri", layout.downloads / "student")
    models.check_model_files(source, "student.uri")
    try:
        return source, models.load_tokenizer(source)
    except Exception as error:
        raise PreflightError(f"student.uri: cannot load the student's tokenizer: {error}") from None


def _check_endpoint_student(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """With an endpoint teacher the student's tokenizer is the only one: it renders, tokenises and maps
    the teacher's tokens. k ≤ its vocabulary (the endpoint may return fewer candidates: they are padded)."""
    assert spec.student.uri is not None
    student_source, student_tokenizer = _student_tokenizer(spec.student.uri, layout)
    vocab = len(student_tokenizer)
    if spec.task.type == "causal-lm" and spec.distillation.top_k > vocab:
        raise PreflightError(
            f"distillation.topK: {spec.distillation.top_k} is larger than the student's vocabulary ({vocab})"
        )
    return {"student_source": student_source, "student_tokenizer": student_tokenizer}


def _check_language_model_teacher(spec: DistillationJobSpec, source: str, tokenizer: Any) -> None:
    """`teacher.prompt` scores answers with a causal LM: the model must be one, and the labels' answers must
    be distinct token sequences for it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from kubedistill_jobs import llm_teacher

    try:
        config = AutoConfig.from_pretrained(source, gguf_file=spec.teacher.gguf_file)
    except Exception as error:
        raise PreflightError(f"teacher.uri: cannot read the teacher's config from {source}: {error}") from None
    architectures = config.architectures or []
    causal = (any(a.endswith("ForCausalLM") for a in architectures) if architectures
              else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if not causal:
        raise PreflightError(
            f"teacher.prompt: needs a causal language model as teacher.uri, but {source} is "
            f"{', '.join(architectures) or config.model_type}; remove teacher.prompt to adapt an encoder "
            "teacher to the labels, or point teacher.uri at a causal LM"
        )
    llm_teacher.answer_ids(tokenizer, llm_teacher.LabelPrompt.from_spec(spec).answers)
