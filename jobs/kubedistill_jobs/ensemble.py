"""Several teachers (`spec.teachers`): each labels both splits on its own (a classifier adapted to the labels,
or a language model through its prompt) in `teachers/<i>/`, and their class distributions are combined into
the soft targets. The combination is written as the job's `teacher_outputs/` record (meta.json says how, with
each teacher's weight and quality), so later stages treat it as a teacher without a graph, like a prompt.

Combinations of per-teacher log-probabilities `log p_i (N, C)` with weights `w_i` (normalised, Σ w_i = 1):
- `mean`: log Σ_i w_i p_i, the mixture (a teacher unsure of a class keeps some mass on it);
- `product`: Σ_i w_i log p_i − log Σ_c exp(Σ_i w_i log p_i,c), the normalised weighted geometric mean
  (product of experts: a class any teacher rules out is ruled out).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec, EnsembleCombination
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs import soft_targets, teacher_record
from kubedistill_jobs.data import Split

Progress = Callable[[int, int], None]
METHOD = "ensemble"
LOGPROBS = "logprobs.npy"  # in teachers/<i>/: that teacher's log-probabilities (N, C), train rows then eval rows


def normalised_weights(weights: list[float]) -> np.ndarray:
    """Weights `(T,)` that sum to 1; ValueError naming `teachers` when they sum to no positive number."""
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"teachers: the weights {weights} must be non-negative and sum to a positive number")
    return w / w.sum()


def combine(logprobs: list[np.ndarray], weights: list[float], combination: EnsembleCombination) -> np.ndarray:
    """The combined log-probabilities `(N, C)` of the teachers' `(N, C)` log-probabilities (see the module)."""
    if not logprobs or any(lp.shape != logprobs[0].shape for lp in logprobs):
        raise ValueError(f"teachers: expected distributions of one shape, got {[lp.shape for lp in logprobs]}")
    w = normalised_weights(weights)
    stacked = np.stack([lp.astype(np.float64) for lp in logprobs])  # (T, N, C)
    used = w > 0  # a weight of 0 leaves a teacher out (its -inf would otherwise poison the product)
    stacked, w = stacked[used], w[used]
    if combination == "mean":
        # log Σ w_i exp(lp_i), stably
        shifted = stacked + np.log(w)[:, None, None]
        top = shifted.max(0)
        return top + np.log(np.exp(shifted - top).sum(0))
    if combination == "product":
        mixed = np.einsum("t,tnc->nc", w, stacked)
        top = mixed.max(-1, keepdims=True)
        return mixed - (top + np.log(np.exp(mixed - top).sum(-1, keepdims=True)))
    raise ValueError(f"distillation.ensemble: {combination!r} is not mean or product")


def member_spec(spec: DistillationJobSpec, index: int) -> DistillationJobSpec:
    """The job as if `teachers[index]` were its only teacher (how that teacher is prepared and checked)."""
    wire = spec.to_wire()
    member = wire.pop("teachers")[index]
    member.pop("weight", None)
    wire["teacher"] = member
    return DistillationJobSpec.model_validate(wire)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))


def _member(spec: DistillationJobSpec, layout: OutputLayout, split: Split, progress: Progress,
            on_usage: Callable[[int, int], None] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One teacher's log-probabilities `(N, C)` over train then eval, and what it was."""
    texts = [r["text"] for r in split.train + split.eval]
    labels = list(spec.task.labels or [])
    assert spec.teacher is not None
    if spec.teacher.prompt is not None:
        from kubedistill_jobs import prompt_teacher

        marker = prompt_teacher.prepare(spec, layout, split, progress, on_usage=on_usage)
        logprobs, _ = teacher_record.reuse(layout.teacher_outputs, texts, labels, marker["template_hash"])
        return logprobs, {"model": marker.get("model"), "method": "prompt",
                          "prompt_tokens": marker.get("prompt_tokens"),
                          "completion_tokens": marker.get("completion_tokens"), "cost": marker.get("cost")}
    from kubedistill_jobs import teacher
    from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher

    outcome = teacher.prepare_classification_teacher(spec, layout, split, progress)
    run = TeacherRun(str(layout.teacher), "logits", tuple(labels), spec.task.max_length)
    logits = run_teacher(run, {"text": texts})["logits"]
    return _log_softmax(logits), {"model": spec.teacher.uri, "method": outcome.method, "params": outcome.params}


def _accuracy(logprobs: np.ndarray, rows: list[dict[str, Any]]) -> float | None:
    from kubedistill_jobs.prompt_teacher import gold_accuracy

    return gold_accuracy(logprobs, rows)


def prepare(spec: DistillationJobSpec, layout: OutputLayout, split: Split, progress: Progress,
            on_usage: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run every teacher, combine them, write `teacher_outputs/` and the train split's `soft_targets/`;
    returns the teacher stage's marker (with the report's `ensemble` entry)."""
    teachers = spec.teachers or []
    labels = list(spec.task.labels or [])
    n_train, n = len(split.train), len(split.train) + len(split.eval)
    done = [0] * len(teachers)

    def member_progress(index: int) -> Progress:
        def report(current: int, total: int) -> None:
            done[index] = round(n * current / max(1, total))
            progress(sum(done), n * len(teachers))
        return report

    outputs = []
    for i in range(len(teachers)):
        member = layout.teacher_member(i)
        logprobs, info = _member(member_spec(spec, i), member, split, member_progress(i), on_usage)
        member.root.mkdir(parents=True, exist_ok=True)
        np.save(member.root / LOGPROBS, logprobs.astype(np.float32))  # what was combined, kept for audit
        outputs.append((logprobs, info))
    weights = [t.weight for t in teachers]
    combined = combine([lp for lp, _ in outputs], weights, spec.distillation.ensemble)
    agreed = combined[n_train:].argmax(-1)
    members = []
    for (logprobs, info), weight in zip(outputs, normalised_weights(weights), strict=True):
        metrics = {"agreement": float((logprobs[n_train:].argmax(-1) == agreed).mean()) if n > n_train else 0.0}
        if (accuracy := _accuracy(logprobs[n_train:], split.eval)) is not None:
            metrics["accuracy"] = accuracy
        members.append({"model": info.get("model"), "method": info["method"], "weight": round(float(weight), 6),
                        "metrics": {k: round(v, 4) for k, v in metrics.items()}})
    accuracy = _accuracy(combined[n_train:], split.eval)
    ensemble = {"combination": spec.distillation.ensemble, "members": members,
                "metrics": {"accuracy": round(accuracy, 4)} if accuracy is not None else {}}
    model = f"{len(teachers)} teachers ({'weighted mean' if spec.distillation.ensemble == 'mean' else 'product'})"
    description = json.dumps({"combination": ensemble["combination"], "weights": weights,
                              "teachers": [t.model_dump(mode="json", by_alias=True, exclude={"weight"})
                                           for t in teachers]}, sort_keys=True)
    template_hash = hashlib.sha256(description.encode()).hexdigest()
    texts = [r["text"] for r in split.train + split.eval]
    tokens = [np.asarray([info.get(k) or 0 for _, info in outputs]).sum() for k in ("prompt_tokens",
                                                                                    "completion_tokens")]
    teacher_record.TeacherRecord(
        split=["train"] * n_train + ["eval"] * len(split.eval), texts=texts, logprobs=combined, raw_logprobs=None,
        prompt_tokens=np.zeros(n, dtype=np.int64), completion_tokens=np.zeros(n, dtype=np.int64),
        meta={"model": model, "labels": labels, "answers": labels, "template_hash": template_hash,
              "sampling": {"method": METHOD, "calibrated": False}, "ensemble": ensemble, "source": "teachers",
              "prompt_tokens_total": int(tokens[0]), "completion_tokens_total": int(tokens[1])},
    ).write(layout.teacher_outputs)
    soft_targets.write(layout.soft_targets, {"logits": combined[:n_train].astype(np.float32)},
                       {"kind": "logits", "rows": n_train, "from": "teacher-stage", "source": METHOD})
    return {"method": METHOD, "params": None, "model": model, "accuracy": accuracy, "rows": n,
            "ensemble": ensemble, "template_hash": template_hash}


def summary(marker: dict[str, Any]) -> str:
    """One line: each teacher's eval accuracy and the combination's."""
    ensemble = marker["ensemble"]

    def accuracy(metrics: dict[str, float]) -> str:
        return f"{metrics['accuracy']:.4f}" if "accuracy" in metrics else "n/a"

    each = ", ".join(f"{m['model']} ×{m['weight']:.2f}: {accuracy(m['metrics'])}" for m in ensemble["members"])
    return f"{marker['model']}, eval accuracy {accuracy(ensemble['metrics'])} ({each})"
