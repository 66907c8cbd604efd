"""The gap evaluation: teacher (fp32 ONNX), student (fp32 ONNX) and quantized student, on the same
held-out inputs and batches, in ONNX Runtime with a fixed thread count.

Quality: accuracy and macro-F1 against gold labels where present, agreement with the teacher's argmax,
mean KL(teacher ‖ student); perplexity for causal LMs. Cost: parameters, size on disk, latency p50/p95
at batch 1 and 32, throughput. The routing frontier and the gate. Writes report.json, report.md, plots/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec, Metric
from kubedistill.artifacts import OutputLayout
from kubedistill.confidence import SIGNALS, confidence, softmax
from kubedistill.report import (
    FrontierPoint,
    Gate,
    Latency,
    LatencyMethod,
    ModelReport,
    Report,
    Routing,
    SignalSweep,
)
from kubedistill_jobs.compress import CompressionResult, load_tokenizer, read_jsonl
from kubedistill_jobs.routing import Frontier, Point, frontier, frontier_from_confidence

log = logging.getLogger(__name__)
EVAL_BATCH = 32
MODELS = ("teacher", "student", "student_quantized")


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


# ---------------------------------------------------------------- quality (pure functions on arrays)


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def mean_kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Mean over rows of KL(teacher ‖ student) at temperature 1."""
    p = softmax(teacher_logits)
    log_p = np.log(np.clip(p, 1e-30, None))
    log_q = np.log(np.clip(softmax(student_logits), 1e-30, None))
    return float((p * (log_p - log_q)).sum(axis=-1).mean())


def classification_metrics(logits: np.ndarray, gold: np.ndarray | None, num_classes: int,
                           teacher_logits: np.ndarray | None) -> dict[str, float]:
    pred = logits.argmax(-1)
    out: dict[str, float] = {}
    if gold is not None:
        out["accuracy"] = float((pred == gold).mean())
        out["macro_f1"] = macro_f1(pred, gold, num_classes)
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(-1)).mean())
        out["kl"] = mean_kl(teacher_logits, logits)
    return out


# ---------------------------------------------------------------- running the graphs


def _batches(tokenizer: Any, texts: list[str], max_length: int, size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(texts), size):
        enc = tokenizer(texts[start:start + size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        yield {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _classify(sess: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    from kubedistill_jobs.onnx_export import onnx_logits

    return np.concatenate([onnx_logits(sess, b) for b in _batches(tokenizer, texts, max_length, EVAL_BATCH)])


@dataclass
class TokenStats:
    """Per-token statistics of a causal LM on held-out text (next-token prediction)."""

    nll_sum: float = 0.0
    tokens: int = 0
    correct: list[np.ndarray] = field(default_factory=list)
    conf: dict[str, list[np.ndarray]] = field(default_factory=lambda: {s: [] for s in SIGNALS})
    argmax: list[np.ndarray] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / max(self.tokens, 1)))

    def metrics(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "next_token_accuracy": float(np.concatenate(self.correct).mean())}


def _causal_stats(sess: Any, tokenizer: Any, texts: list[str], max_length: int) -> TokenStats:
    from kubedistill_jobs.onnx_export import onnx_logits

    stats = TokenStats()
    for b in _batches(tokenizer, texts, max_length, 4):  # (batch, seq, vocab) logits are large
        logits = onnx_logits(sess, b)[:, :-1, :len(tokenizer)]  # a padded embedding's extra rows are no tokens
        target = b["input_ids"][:, 1:]
        mask = b["attention_mask"][:, 1:].astype(bool) & b["attention_mask"][:, :-1].astype(bool)
        logits = logits[mask]  # (tokens, vocab)
        target = target[mask]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        stats.nll_sum += float(-log_probs[np.arange(len(target)), target].sum())
        stats.tokens += len(target)
        stats.argmax.append(logits.argmax(-1))
        stats.correct.append(logits.argmax(-1) == target)
        probs = np.exp(log_probs)
        for s in SIGNALS:
            stats.conf[s].append(confidence(probs, s))
    return stats


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
    single = {name: list(_batches(tokenizers[name], sample, max_length, 1)) for name in paths}
    full = {name: list(_batches(tokenizers[name], (sample * EVAL_BATCH)[:EVAL_BATCH], max_length, EVAL_BATCH))
            for name in paths}
    b1 = _interleaved(sessions, single, settings.reps_batch1, settings)
    b32 = _interleaved(sessions, full, settings.reps_batch32, settings)
    for name in paths:
        log.info("latency %s: batch 1 p50 %.2f ms, batch 32 p50 %.2f ms", name, b1[name]["p50"], b32[name]["p50"])
    return {name: {"batch1": b1[name], "batch32": b32[name]} for name in paths}


# ---------------------------------------------------------------- the report


def gate(retention: float | None, min_retention: float | None) -> Gate:
    """Pass when retention reaches the bar (or there is none); `shortfall` says by how much it missed. An
    unknown retention (an endpoint that cannot score prompts) meets no bar."""
    if min_retention is None:
        return Gate(min_retention=None, passed=True, shortfall=0.0)
    if retention is None:
        return Gate(min_retention=min_retention, passed=False, shortfall=min_retention)
    passed = retention >= min_retention
    return Gate(min_retention=min_retention, passed=passed, shortfall=0.0 if passed else min_retention - retention)


def _model_report(params: int, path: Path, metrics: dict[str, float],
                  lat: dict[str, dict[str, float]] | None) -> ModelReport:
    if lat is None:  # evaluation.metrics leaves out latency
        return ModelReport(params=params, size_bytes=_size(path), metrics=metrics, latency_ms=None, onnx=path.name)
    b1, b32 = lat["batch1"], lat["batch32"]
    return ModelReport(
        params=params,
        size_bytes=_size(path),
        metrics=metrics,
        latency_ms=Latency(p50=b1["p50"], p95=b1["p95"]),
        latency_ms_batch32=Latency(p50=b32["p50"], p95=b32["p95"]),
        throughput={"batch1": b1["throughput"], "batch32": b32["throughput"]},
        onnx=path.name,
    )


def listed_metrics(metrics: dict[str, float], wanted: list[str], primary: str) -> dict[str, float]:
    """The metrics `evaluation.metrics` asks for, and always the primary one (retention and the gate use
    it); metrics outside the API's vocabulary (next-token accuracy) are kept."""
    vocabulary = set(get_args(Metric))
    return {k: v for k, v in metrics.items() if k not in vocabulary or k in wanted or k == primary}


def _size(path: Path) -> int:
    """The graph plus any external-data files beside it."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))


def _point(point: Point | None) -> FrontierPoint | None:
    return None if point is None else FrontierPoint(**vars(point))


def _routing(fr: dict[str, Frontier], target: float, reference: str) -> Routing:
    main = fr["max-probability"]
    return Routing(
        signal=main.signal,
        frontier=[FrontierPoint(**vars(p)) for p in main.points],
        recommended_threshold=None if main.recommended is None else main.recommended.threshold,
        target=target,
        recommended=_point(main.recommended),
        teacher_accuracy=main.teacher_accuracy,
        student_accuracy=main.student_accuracy,
        reference=reference,
        signals={
            name: SignalSweep(recommended_threshold=None if f.recommended is None else f.recommended.threshold,
                              escalation_rate=None if f.recommended is None else f.recommended.escalation_rate,
                              accuracy=None if f.recommended is None else f.recommended.accuracy,
                              frontier=[FrontierPoint(**vars(p)) for p in f.points])
            for name, f in fr.items()
        },
    )


@dataclass
class Quality:
    """What the quality half of the evaluation found, for either task."""

    metrics: dict[str, dict[str, float]]
    retention: float
    agreement: float | None
    frontiers: dict[str, Frontier]
    reference: str  # what quality is measured against (Report.quality_reference)
    labelled: bool | None = None
    quantization_accuracy_drop: float | None = None
    routing_note: str | None = None


def classification_quality(logits: dict[str, np.ndarray], gold: np.ndarray | None, num_labels: int,
                           target: float) -> Quality:
    """Metrics per model, retention of the quantized student and the frontier on its confidence.

    Without gold labels the teacher is the reference: quality is agreement with it (the teacher's own is 1).
    """
    teacher = logits["teacher"]
    metrics = {n: classification_metrics(logits[n], gold, num_labels, None if n == "teacher" else teacher)
               for n in MODELS}
    reference = gold if gold is not None else teacher.argmax(-1)
    student_ok = logits["student_quantized"].argmax(-1) == reference
    teacher_ok = teacher.argmax(-1) == reference
    probs = softmax(logits["student_quantized"])
    frontiers = {s: frontier(probs, student_ok, teacher_ok, signal=s, target=target) for s in SIGNALS}
    primary = "accuracy" if gold is not None else "agreement"
    if gold is None:
        metrics["teacher"]["agreement"] = 1.0
    retention = metrics["student_quantized"][primary] / max(metrics["teacher"][primary], 1e-12)
    return Quality(metrics, retention, metrics["student_quantized"]["agreement"], frontiers,
                   reference="gold labels" if gold is not None else "teacher", labelled=gold is not None,
                   quantization_accuracy_drop=metrics["student"][primary] - metrics["student_quantized"][primary])


def causal_quality(stats: dict[str, TokenStats], same_tokens: bool, target: float) -> Quality:
    """Perplexities, next-token accuracy and (with one tokenization) a token-level frontier."""
    metrics = {n: s.metrics() for n, s in stats.items()}
    agreement = None
    frontiers: dict[str, Frontier] = {}
    if same_tokens:  # token-by-token comparison needs one tokenization
        t_argmax = np.concatenate(stats["teacher"].argmax)
        for n in ("student", "student_quantized"):
            metrics[n]["agreement"] = float((np.concatenate(stats[n].argmax) == t_argmax).mean())
        agreement = metrics["student_quantized"]["agreement"]
        q, t = stats["student_quantized"], stats["teacher"]
        frontiers = {s: frontier_from_confidence(np.concatenate(q.conf[s]), np.concatenate(q.correct),
                                                 np.concatenate(t.correct), signal=s, target=target)
                     for s in SIGNALS}
    retention = metrics["teacher"]["perplexity"] / metrics["student_quantized"]["perplexity"]
    note = ("token-level: the cascade's next-token accuracy when tokens whose student confidence is below "
            "the threshold are predicted by the teacher") if same_tokens else (
            "no frontier: teacher and student tokenize differently")
    return Quality(metrics, retention, agreement, frontiers, reference="held-out text", routing_note=note)


def evaluate(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
             progress: Callable[[int, int], None] | None = None,
             settings: LatencySettings | None = None) -> Report:
    """Evaluate the compressed student against the teacher; writes report.json, report.md and plots/."""
    from kubedistill_jobs.onnx_export import session

    settings = settings or LatencySettings()
    result = CompressionResult.read(layout)
    rows = read_jsonl(layout.data / "eval.jsonl", spec.evaluation.max_samples)
    if not rows:
        raise ValueError(f"{layout.data / 'eval.jsonl'} is empty: raise dataset.evalFraction or add data")
    if spec.teacher.endpoint is not None:
        return evaluate_with_endpoint(spec, layout, model_version, result, [r["text"] for r in rows],
                                      progress=progress, settings=settings)
    teacher_path = result.teacher_path(layout)
    if teacher_path is None:
        raise FileNotFoundError("compress wrote no teacher ONNX graph; rerun the compress stage")
    task, max_length, target = spec.task.type, spec.task.max_length, spec.evaluation.routing_target
    texts = [r["text"] for r in rows]
    tokenizers = {"teacher": load_tokenizer(layout.teacher), "student": load_tokenizer(layout.student)}
    tokenizers["student_quantized"] = tokenizers["student"]
    paths = {"teacher": teacher_path, "student": result.student_path(layout),
             "student_quantized": result.served_path(layout)}
    params = {"teacher": result.teacher_params, "student": result.student_params,
              "student_quantized": result.student_params}
    total = 4
    if progress:
        progress(0, total)

    if task == "sequence-classification":
        labels = spec.task.labels or []
        gold_values = [r.get("label") for r in rows]
        gold = np.asarray(gold_values, dtype=np.int64) if all(g is not None for g in gold_values) else None
        if gold is not None and ((gold < 0) | (gold >= len(labels))).any():
            raise ValueError(f"eval.jsonl: labels must be indices into task.labels (0..{len(labels) - 1})")
        logits = {n: _classify(session(p, settings.threads), tokenizers[n], texts, max_length)
                  for n, p in paths.items()}
        quality = classification_quality(logits, gold, len(labels), target)
    else:
        stats = {n: _causal_stats(session(p, settings.threads), tokenizers[n], texts, max_length)
                 for n, p in paths.items()}
        same_tokens = tokenizers["teacher"].get_vocab() == tokenizers["student"].get_vocab()
        quality = causal_quality(stats, same_tokens, target)
    if progress:
        progress(1, total)

    wanted = spec.evaluation.metrics
    latency = measure_latency(paths, tokenizers, texts, max_length, settings) if "latency" in wanted else None
    if progress:
        progress(3, total)
    primary = "perplexity" if task == "causal-lm" else "accuracy" if quality.labelled else "agreement"
    reports = {n: _model_report(params[n], paths[n], listed_metrics(quality.metrics[n], wanted, primary),
                                latency[n] if latency else None) for n in MODELS}
    report = Report(
        task=task,
        teacher=reports["teacher"],
        student=reports["student"],
        student_quantized=reports["student_quantized"],
        retention=float(quality.retention),
        agreement=quality.agreement,
        speedup=(latency["teacher"]["batch1"]["p50"] / latency["student_quantized"]["batch1"]["p50"]
                 if latency else None),
        compression=reports["teacher"].size_bytes / reports["student_quantized"].size_bytes,
        routing=_routing(quality.frontiers, target, quality.reference) if quality.frontiers else None,
        gate=gate(float(quality.retention), spec.evaluation.gate.min_retention),
        model_version=model_version,
        speedup_batch32=(latency["teacher"]["batch32"]["p50"] / latency["student_quantized"]["batch32"]["p50"]
                         if latency else None),
        labelled=quality.labelled,
        latency_settings=settings.method(),
        quality_reference=quality.reference,
        quantization_accuracy_drop=quality.quantization_accuracy_drop,
        routing_note=quality.routing_note,
        eval_samples=len(rows), quantization=result.quantization, onnx_max_abs_diff=result.max_abs_diff,
        pruning=result.pruning,
    )
    write_report(report, layout)
    if progress:
        progress(4, total)
    return report


def _first_tokens(tokenizer: Any, text: str, max_length: int) -> str:
    """The part of `text` the student is scored on (its first `max_length` tokens), so that the endpoint
    teacher scores the same span."""
    offsets = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        add_special_tokens=False)["offset_mapping"]
    return text[: offsets[-1][1]] if offsets else text


def evaluate_with_endpoint(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
                           result: CompressionResult, texts: list[str], *,
                           progress: Callable[[int, int], None] | None, settings: LatencySettings) -> Report:
    """A remote endpoint teacher (causal-lm): the students on held-out text; the teacher's perplexity on the
    same texts from the endpoint (`echo`), when it scores prompts. No teacher graph: speedup, compression,
    agreement and the routing frontier are null, and without the teacher's perplexity so is retention."""
    from kubedistill_jobs.endpoint_teacher import EndpointClient, EndpointConfig
    from kubedistill_jobs.onnx_export import session

    max_length, total = spec.task.max_length, 4
    tokenizer = load_tokenizer(layout.student)
    paths = {"student": result.student_path(layout), "student_quantized": result.served_path(layout)}
    if progress:
        progress(0, total)
    stats = {n: _causal_stats(session(p, settings.threads), tokenizer, texts, max_length) for n, p in paths.items()}
    metrics = {n: s.metrics() for n, s in stats.items()}
    config = EndpointConfig.from_spec(spec)
    client = EndpointClient(config)
    scored: list[list[float] | None] = []
    for text in texts:  # an endpoint that does not score one prompt scores none: stop asking
        scored.append(client.prompt_logprobs(_first_tokens(tokenizer, text, max_length)))
        if scored[-1] is None:
            break
    teacher_metrics: dict[str, float] = {}
    if all(s is not None for s in scored) and sum(len(s) for s in scored if s):
        logprobs = [v for s in scored if s for v in s]
        teacher_metrics["perplexity"] = float(np.exp(-np.mean(logprobs)))
        note = ("the teacher's perplexity is scored by the endpoint (echo) over its own tokens of the same "
                "held-out texts")
    else:
        note = ("the endpoint did not score prompts (echo with logprobs): the teacher's metrics and retention "
                "are null")
    if progress:
        progress(1, total)
    wanted = spec.evaluation.metrics
    latency = (measure_latency(paths, {n: tokenizer for n in paths}, texts, max_length, settings)
               if "latency" in wanted else None)
    if progress:
        progress(3, total)
    reports = {n: _model_report(result.student_params, paths[n], listed_metrics(metrics[n], wanted, "perplexity"),
                                latency[n] if latency else None) for n in paths}
    teacher = ModelReport(params=None, size_bytes=None, metrics=teacher_metrics, latency_ms=None,
                          endpoint=config.url, model=config.model)
    retention = (teacher_metrics["perplexity"] / metrics["student_quantized"]["perplexity"]
                 if teacher_metrics else None)
    verdict = gate(retention, spec.evaluation.gate.min_retention)
    report = Report(
        task=spec.task.type, teacher=teacher, student=reports["student"],
        student_quantized=reports["student_quantized"], retention=retention, agreement=None, speedup=None,
        compression=None, routing=None, gate=verdict, model_version=model_version,
        latency_settings=settings.method(), quality_reference="held-out text", teacher_note=note,
        routing_note="no frontier: an endpoint teacher's per-token predictions are not compared",
        eval_samples=len(texts), quantization=result.quantization, onnx_max_abs_diff=result.max_abs_diff,
        pruning=result.pruning,
    )
    write_report(report, layout)
    if progress:
        progress(4, total)
    return report


def write_report(report: Report, layout: OutputLayout) -> None:
    from kubedistill_jobs import render

    layout.report_json.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    history = None
    if layout.train_report.is_file():
        history = json.loads(layout.train_report.read_text()).get("history")
    plots = render.plots(report, history, layout.plots)
    relative = {k: Path(v).relative_to(layout.root) for k, v in plots.items()}
    layout.report_md.write_text(render.markdown(report, relative))
