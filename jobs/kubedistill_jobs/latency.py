"""The cost half of the gap evaluation: latency p50/p95 at batch 1 and 32 and throughput, every model timed on
the same inputs in ONNX Runtime with a fixed thread count."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.report import LatencyMethod
from kubedistill_jobs.quality import EVAL_BATCH, batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencySettings:
    """Intra-op threads are fixed so runs compare; repetitions bounded by count and by a time budget."""

    threads: int = field(default_factory=lambda: int(os.environ.get("KUBEDISTILL_EVAL_THREADS", "0"))
                         or min(4, os.cpu_count() or 1))
    warmup: int = 5
    reps_batch1: int = 200
    reps_batch32: int = 20
    budget_s: float = 20.0  # per model and batch size

    def method(self) -> LatencyMethod:
        """How the report says latency was measured."""
        return LatencyMethod(threads=self.threads, warmup=self.warmup, runtime="onnxruntime CPUExecutionProvider",
                             batch_sizes=[1, EVAL_BATCH])


def _stats(times: list[float], items: float) -> dict[str, float]:
    arr = np.asarray(times)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "throughput": items / (float(arr.mean()) / 1000), "runs": len(times)}


def _interleaved(sessions: dict[str, Any], inputs: dict[str, list[dict[str, np.ndarray]]], reps: int,
                 settings: LatencySettings) -> dict[str, dict[str, float]]:
    """Time every model once per round, on the same input, round after round.

    Interleaving makes the comparison fair on a shared machine: a burst of load from elsewhere slows
    all models in that round alike instead of whichever one happened to be measured then.
    """
    from kubedistill_jobs.onnx_export import onnx_logits

    for name, sess in sessions.items():
        for i in range(settings.warmup):
            onnx_logits(sess, inputs[name][i % len(inputs[name])])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    deadline = time.perf_counter() + settings.budget_s * len(sessions)
    rounds = 0
    while rounds < reps and (rounds < 10 or time.perf_counter() < deadline):
        for name, sess in sessions.items():
            batch = inputs[name][rounds % len(inputs[name])]
            t0 = time.perf_counter()
            onnx_logits(sess, batch)
            times[name].append((time.perf_counter() - t0) * 1000)
        rounds += 1
    return {name: _stats(t, float(np.mean([len(b["input_ids"]) for b in inputs[name]]))) for name, t in times.items()}


def measure_latency(paths: dict[str, Path], tokenizers: dict[str, Any], texts: list[str], max_length: int,
                    settings: LatencySettings) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"batch1": {...}, "batch32": {...}}}: p50/p95 ms and items/s, the same texts for every model."""
    from kubedistill_jobs.onnx_export import session

    sample = texts[: max(EVAL_BATCH, 64)]
    sessions = {name: session(path, threads=settings.threads) for name, path in paths.items()}
    single = {name: list(batches(tokenizers[name], sample, max_length, 1)) for name in paths}
    full = {name: list(batches(tokenizers[name], (sample * EVAL_BATCH)[:EVAL_BATCH], max_length, EVAL_BATCH))
            for name in paths}
    b1 = _interleaved(sessions, single, settings.reps_batch1, settings)
    b32 = _interleaved(sessions, full, settings.reps_batch32, settings)
    for name in paths:
        log.info("latency %s: batch 1 p50 %.2f ms, batch 32 p50 %.2f ms", name, b1[name]["p50"], b32[name]["p50"])
    return {name: {"batch1": b1[name], "batch32": b32[name]} for name in paths}
