"""Checks a job can run before any compute is spent: every problem is an error naming the field and the fix.

(The API models already refuse malformed specs; these checks need the models and data themselves.)
"""

from __future__ import annotations

from typing import Any

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs import models


class PreflightError(ValueError):
    """A job that cannot run as specified."""


def check_spec(spec: DistillationJobSpec, workers: int) -> None:
    """Checks on the spec alone."""
    if spec.teacher.endpoint is not None:
        raise PreflightError(
            "teacher.endpoint: remote endpoint teachers are not supported by this pipeline yet; "
            "give teacher.uri (a model folder, pkg://, hf:// or s3://)"
        )
    if spec.training.batch_size < workers:
        raise PreflightError(
            f"training.batchSize: {spec.training.batch_size} is smaller than the {workers} training workers; "
            "each worker needs at least one example per step"
        )


def check_models(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """Teacher and student exist; a causal-lm student shares the teacher's vocabulary; k ≤ vocabulary.
    Returns the loaded teacher tokenizer (and the student's, when it has its own)."""
    assert spec.teacher.uri is not None
    teacher_source = models.model_source(spec.teacher.uri, "teacher.uri", layout.root / "downloads" / "teacher")
    models.check_model_files(teacher_source, "teacher.uri", spec.teacher.gguf_file)
    try:
        teacher_tokenizer = models.load_tokenizer(teacher_source, spec.teacher.gguf_file)
    except Exception as error:
        raise PreflightError(f"teacher.uri: cannot load the tokenizer of {teacher_source}: {error}") from None
    found: dict[str, Any] = {"teacher_source": teacher_source, "teacher_tokenizer": teacher_tokenizer}
    if spec.student.uri is not None:
        student_source = models.model_source(spec.student.uri, "student.uri", layout.root / "downloads" / "student")
        models.check_model_files(student_source, "student.uri")
        try:
            student_tokenizer = models.load_tokenizer(student_source)
        except Exception as error:
            raise PreflightError(f"student.uri: cannot load the student's tokenizer: {error}") from None
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
