"""The compress stage: optional structured pruning (+ recovery), ONNX export of the student and the
teacher with an equivalence check on real inputs, and quantization of the student.

Everything lands in `onnx/` with a `compression.json` that the evaluate and export stages read:
    onnx/student.onnx         fp32 student (pruned, when asked)
    onnx/student.int8.onnx    the served student (int8 / int4; absent with quantization none)
    onnx/teacher.onnx         fp32 teacher: the latency baseline and Triton's escalation model
                              (none for a remote endpoint teacher or an LLM labeller: no classifier to export)
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs.data import read_jsonl
from kubedistill_jobs.models import load_saved_model, load_tokenizer
from kubedistill_jobs.quantize import check_supported, quantized_name

log = logging.getLogger(__name__)
COMPRESSION_JSON = "compression.json"
# Largest |PyTorch − ONNX| logit difference accepted for an fp32 export, relative to the largest logit
# (at least 1): kernels sum in other orders, so large logits differ a little more; beyond it the graph is wrong.
EXPORT_TOLERANCE = 1e-3
_CHECK_ROWS = 16


class CompressionResult(BaseModel):
    """`onnx/compression.json`: file names are relative to `onnx/`."""

    task: str
    quantization: str
    student_onnx: str
    quantized_onnx: str | None
    teacher_onnx: str | None
    student_params: int
    teacher_params: int | None  # None: a remote endpoint teacher (no graph)
    max_abs_diff: dict[str, float]
    pruning: dict[str, Any] | None = None
    recovery_losses: list[float] | None = None

    def served_path(self, layout: OutputLayout) -> Path:
        return layout.onnx / (self.quantized_onnx or self.student_onnx)

    def student_path(self, layout: OutputLayout) -> Path:
        return layout.onnx / self.student_onnx

    def teacher_path(self, layout: OutputLayout) -> Path | None:
        return None if self.teacher_onnx is None else layout.onnx / self.teacher_onnx

    def write(self, layout: OutputLayout) -> None:
        (layout.onnx / COMPRESSION_JSON).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def read(cls, layout: OutputLayout) -> CompressionResult:
        path = layout.onnx / COMPRESSION_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the compress stage first")
        return cls.model_validate_json(path.read_text())


def recovery_batches(spec: DistillationJobSpec, layout: OutputLayout, tokenizer: Any,
                      teacher_tokenizer: Any) -> Callable[[], Iterator[dict[str, Any]]]:
    import torch

    from kubedistill_jobs.losses import IGNORE_INDEX

    rows = read_jsonl(layout.data / "train.jsonl")
    rng = random.Random(spec.training.seed)
    size = spec.training.batch_size

    def batches() -> Iterator[dict[str, Any]]:
        order = list(rows)
        rng.shuffle(order)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            texts = [r["text"] for r in chunk]
            s = tokenizer(texts, padding=True, truncation=True, max_length=spec.task.max_length, return_tensors="pt")
            t = teacher_tokenizer(texts, padding=True, truncation=True, max_length=spec.task.max_length,
                                  return_tensors="pt")
            labels = None
            if spec.task.type == "sequence-classification":
                labels = torch.tensor([IGNORE_INDEX if r.get("label") is None else r["label"] for r in chunk])
            yield {"input_ids": s["input_ids"], "attention_mask": s["attention_mask"],
                   "teacher_input_ids": t["input_ids"], "teacher_attention_mask": t["attention_mask"],
                   "labels": labels}

    return batches


def compress(
    spec: DistillationJobSpec, layout: OutputLayout, progress: Callable[[int, int], None] | None = None
) -> None:
    """Prune (if asked), export student and teacher to ONNX, check them, quantize the student."""
    import torch

    from kubedistill_jobs.onnx_export import compare, export_onnx, probe_inputs
    from kubedistill_jobs.prune import prune, recover
    from kubedistill_jobs.quantize import quantize

    task = spec.task.type
    quantization = spec.compression.quantization
    check_supported(quantization, task)  # before any model is loaded
    pruning = spec.compression.pruning
    teacher = spec.teacher  # None: several teachers, combined into recorded outputs (no graph either)
    no_graph = teacher is None or teacher.endpoint is not None or teacher.prompt is not None
    steps = 4 + (pruning.recovery_steps if pruning.method != "none" else 0) - no_graph
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, steps)

    layout.onnx.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(layout.student))
    student = load_saved_model(layout.student, task)
    endpoint = no_graph  # a remote teacher or an LLM labeller: no classifier graph (no pruning either)
    teacher_tokenizer = None if endpoint else load_tokenizer(str(layout.teacher))
    teacher = None if endpoint else load_saved_model(layout.teacher, task)
    rows = read_jsonl(layout.data / "eval.jsonl")[:_CHECK_ROWS] or read_jsonl(layout.data / "train.jsonl")[:_CHECK_ROWS]
    texts = tuple(r["text"] for r in rows) or ("a probe sentence",)

    pruning_info = None
    losses = None
    if pruning.method != "none":
        pruning_info = prune(student, spec)
        log.info("pruned student: %s", pruning_info)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        losses = recover(student, teacher, recovery_batches(spec, layout, tokenizer, teacher_tokenizer), spec,
                         device=device, progress=lambda i, n: tick(),
                         vocab_size=len(tokenizer) if task == "causal-lm" else None)
        student.to("cpu")
        teacher.to("cpu")

    diffs: dict[str, float] = {}
    graphs = [("student", student, tokenizer)] + ([] if endpoint else [("teacher", teacher, teacher_tokenizer)])
    for name, model, tok in graphs:
        path = layout.onnx / f"{name}.onnx"
        export_onnx(model, tok, path, task=task, max_length=spec.task.max_length)
        diffs[name], scale = compare(model, path, probe_inputs(tok, spec.task.max_length, texts), task)
        log.info("%s ONNX export: max |PyTorch − ONNX| = %.2e on %d real inputs", name, diffs[name], len(texts))
        if diffs[name] > EXPORT_TOLERANCE * max(1.0, scale):
            raise RuntimeError(
                f"the {name}'s ONNX graph differs from PyTorch by {diffs[name]:.3g} (logits up to {scale:.3g}) "
                "on real inputs; the export is wrong"
            )
        tick()

    quantized = None
    if quantization != "none":
        quantize(layout.onnx / "student.onnx", layout.onnx / quantized_name(quantization), quantization, task)
        quantized = quantized_name(quantization)
    tick()
    CompressionResult(
        task=task,
        quantization=quantization,
        student_onnx="student.onnx",
        quantized_onnx=quantized,
        teacher_onnx=None if endpoint else "teacher.onnx",
        student_params=sum(p.numel() for p in student.parameters()),
        teacher_params=None if teacher is None else sum(p.numel() for p in teacher.parameters()),
        max_abs_diff=diffs,
        pruning=pruning_info,
        recovery_losses=losses,
    ).write(layout)
    tick()
