"""The gap evaluation: teacher (fp32 ONNX), student (fp32 ONNX) and quantized student, on the same
held-out inputs and batches, in ONNX Runtime with a fixed thread count.

Quality (`quality`), cost (parameters, size on disk, and `latency`), the routing frontier (`routing`) and
the gate, put together into the report. Writes report.json, report.md, plots/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec, Metric
from kubedistill.artifacts import STAGES, OutputLayout
from kubedistill.report import (
    CaptureComparison,
    CrossTokenizer,
    Ensemble,
    Gate,
    GenerationEval,
    GenerationExample,
    Latency,
    ModelReport,
    Report,
    Routing,
    TeacherGeneration,
)
from kubedistill_jobs.compress import CompressionResult
from kubedistill_jobs.data import read_jsonl
from kubedistill_jobs.latency import LatencySettings, measure_latency
from kubedistill_jobs.models import load_tokenizer
from kubedistill_jobs.quality import (
    MODELS,
    answers_fit,
    causal_quality,
    causal_stats,
    classification_quality,
    classify,
)
from kubedistill_jobs.routing import routing_report
from kubedistill_jobs.tiers import cascade_report, prepare_tiers


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


def evaluate(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
             progress: Callable[[int, int], None] | None = None,
             settings: LatencySettings | None = None) -> Report:
    """Evaluate the compressed student against the teacher (and, with dataset.capture, against the serving
    student on captured traffic); writes report.json, report.md and plots/."""
    settings = settings or LatencySettings()
    report = _evaluate(spec, layout, model_version, progress, settings)
    if spec.dataset.capture is None or not layout.capture_eval.is_file():
        return report
    report.capture = capture_comparison(spec, layout, settings)
    if report.capture is not None:
        passed = report.capture.min_gain is None or report.capture.gain >= report.capture.min_gain
        report.gate = report.gate.model_copy(update={"capture_passed": None if report.capture.min_gain is None
                                                     else passed, "passed": report.gate.passed and passed})
        write_report(report, layout)
    return report


def capture_comparison(spec: DistillationJobSpec, layout: OutputLayout,
                       settings: LatencySettings) -> CaptureComparison | None:
    """The new quantized student and the serving one (its answers as recorded) on the held-out captured rows,
    by agreement with the teacher's answers. Classification only: None for a causal LM."""
    from kubedistill_jobs.onnx_export import session

    capture = spec.dataset.capture
    rows = read_jsonl(layout.capture_eval)
    if capture is None or not rows or spec.task.type != "sequence-classification":
        return None
    result = CompressionResult.read(layout)
    logits = classify(session(result.served_path(layout), settings.threads), load_tokenizer(str(layout.student)),
                      [r["text"] for r in rows], spec.task.max_length)
    teacher = np.asarray([r["label"] for r in rows])
    served = np.asarray([-1 if r.get("served_label") is None else r["served_label"] for r in rows])
    new_agreement = float((logits.argmax(axis=1) == teacher).mean())
    served_agreement = float((served == teacher).mean())
    marker = json.loads(layout.stage_marker("data").read_text()).get("capture") or {} \
        if layout.stage_marker("data").is_file() else {}
    return CaptureComparison(
        uri=capture.uri, rows=len(rows), served_versions=sorted({str(r.get("served_version")) for r in rows}),
        served_agreement=served_agreement, new_agreement=new_agreement, gain=new_agreement - served_agreement,
        min_gain=capture.min_gain, train_rows=marker.get("train_rows"), train_share=marker.get("share"))


def _evaluate(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
              progress: Callable[[int, int], None] | None, settings: LatencySettings) -> Report:
    from kubedistill_jobs.onnx_export import session

    started = time.monotonic()
    result = CompressionResult.read(layout)
    rows = read_jsonl(layout.data / "eval.jsonl")[: spec.evaluation.max_samples]
    if not rows:
        raise ValueError(f"{layout.data / 'eval.jsonl'} is empty: raise dataset.evalFraction or add data")
    if spec.teacher is None or spec.teacher.prompt is not None:  # a labeller, or several teachers combined
        return evaluate_with_labeller(spec, layout, model_version, result, rows, progress=progress,
                                      settings=settings, started=started)
    if spec.teacher.endpoint is not None:
        return evaluate_with_endpoint(spec, layout, model_version, result, [r["text"] for r in rows],
                                      progress=progress, settings=settings, started=started)
    teacher_path = result.teacher_path(layout)
    if teacher_path is None:
        raise FileNotFoundError("compress wrote no teacher ONNX graph; rerun the compress stage")
    task, max_length, target = spec.task.type, spec.task.max_length, spec.evaluation.routing_target
    texts = [r["text"] for r in rows]
    tokenizers = {"teacher": load_tokenizer(str(layout.teacher)), "student": load_tokenizer(str(layout.student))}
    tokenizers["student_quantized"] = tokenizers["student"]
    paths = {"teacher": teacher_path, "student": result.student_path(layout),
             "student_quantized": result.served_path(layout)}
    params = {"teacher": result.teacher_params, "student": result.student_params,
              "student_quantized": result.student_params}
    total = 4
    if progress:
        progress(0, total)
    tiers = prepare_tiers(spec, layout) if spec.evaluation.tiers else []

    perplexity_scope, perplexity_rows = None, None
    if task == "sequence-classification":
        labels = spec.task.labels or []
        gold_values = [r.get("label") for r in rows]
        gold = np.asarray(gold_values, dtype=np.int64) if all(g is not None for g in gold_values) else None
        if gold is not None and ((gold < 0) | (gold >= len(labels))).any():
            raise ValueError(f"eval.jsonl: labels must be indices into task.labels (0..{len(labels) - 1})")
        logits = {n: classify(session(p, settings.threads), tokenizers[n], texts, max_length)
                  for n, p in paths.items()}
        quality = classification_quality(logits, gold, len(labels), target)
        generation = None
        for tier in tiers:  # evaluation.tiers: scored as the teacher is (ONNX), timed with the others below
            logits[tier.name] = classify(session(tier.onnx, settings.threads), tier.tokenizer, texts, max_length)
    else:
        # with task.prompt and references, the task's perplexity: the reference answers' tokens given the prompts,
        # on the rows whose whole reference fits after the prompt in every model's tokens (the same span for all)
        references = [str(r.get("reference") or "") for r in rows]
        scored = answers_fit(list(tokenizers.values()), texts, references, max_length) \
            if spec.task.prompt is not None and all(references) else []
        if any(scored):
            kept = [i for i, fits in enumerate(scored) if fits]
            stats = {n: causal_stats(session(p, settings.threads), tokenizers[n], [texts[i] for i in kept],
                                     max_length, [references[i] for i in kept]) for n, p in paths.items()}
            perplexity_rows = len(kept)
        else:  # no references, or no prompt leaves room for its reference: every token of the texts
            stats = {n: causal_stats(session(p, settings.threads), tokenizers[n], texts, max_length)
                     for n, p in paths.items()}
        perplexity_scope = stats["teacher"].scope
        same_tokens = tokenizers["teacher"].get_vocab() == tokenizers["student"].get_vocab()
        quality = causal_quality(stats, same_tokens, target)
        generation, answered = _generation(spec, layout, rows, tokenizers, target)
        _add_generation_metrics(spec, quality, answered)
    if progress:
        progress(1, total)

    wanted = spec.evaluation.metrics
    latency = measure_latency({**paths, **{t.name: t.onnx for t in tiers}},
                              {**tokenizers, **{t.name: t.tokenizer for t in tiers}}, texts, max_length, settings) \
        if "latency" in wanted else None
    if progress:
        progress(3, total)
    primary = (spec.evaluation.generation_metric() or "perplexity") if task == "causal-lm" else \
        "accuracy" if quality.labelled else "agreement"
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
        routing=routing_report(quality.frontiers, target, quality.reference) if quality.frontiers else None,
        gate=gate(float(quality.retention), spec.evaluation.gate.min_retention),
        model_version=model_version,
        speedup_batch32=(latency["teacher"]["batch32"]["p50"] / latency["student_quantized"]["batch32"]["p50"]
                         if latency else None),
        labelled=quality.labelled,
        latency_settings=settings.method(),
        quality_reference=quality.reference,
        quantization_accuracy_drop=quality.quantization_accuracy_drop,
        routing_note=quality.routing_note, eval_samples=len(rows), **_compression_fields(result),
        generation_routing=generation, cross_tokenizer=_cross_tokenizer(layout),
        primary=primary if task == "causal-lm" else None,
        perplexity_scope=perplexity_scope, perplexity_rows=perplexity_rows,
        generation=answered.report if task == "causal-lm" else None,
        cascade=cascade_report(spec, tiers, logits, gold, params, latency) if tiers else None,
    )
    teacher_tokens = [len(tokenizers["teacher"](t, truncation=True, max_length=max_length)["input_ids"])
                      for t in texts] if spec.evaluation.economics else None
    report = with_economics(spec, layout, report, texts, tokenizers["student"], started,
                            teacher_tokens=teacher_tokens)
    return _finish(report, layout, progress, total)


def _cross_tokenizer(layout: OutputLayout) -> CrossTokenizer | None:
    """What the soft-targets stage recorded when the student's tokenizer is not the teacher's."""
    from kubedistill_jobs import soft_targets

    meta = soft_targets.read_meta(layout.soft_targets) or {}
    if not meta.get("cross_tokenizer"):
        return None
    return CrossTokenizer(method=meta["cross_tokenizer"], note=meta["note"],
                          teacher_vocabulary=meta["teacher_vocabulary"], student_vocabulary=meta["student_vocabulary"])


@dataclass
class Answered:
    """What the models answered on the held-out prompts: their texts, the references, and how they were made
    (`report` None: no generation metric was asked for, only the routing frontier's two models answered)."""

    answers: dict[str, list[str]]
    references: list[str] | None
    report: GenerationEval | None


def _generation(spec: DistillationJobSpec, layout: OutputLayout, rows: list[dict[str, Any]],
                tokenizers: dict[str, Any], target: float) -> tuple[Routing, Answered]:
    """The generation frontier (generation_eval) on the held-out prompts, with the models built for generation
    as the export serves them (the builds are kept in layout.genai for the export); with a generation metric in
    evaluation.metrics, the fp32 student answers too, each model timed.

    Each model reads the prompts in its own tokens and its answers are decoded with its own tokenizer; where the
    teacher's differs from the student's (a trimmed vocabulary, another family), the frontier compares the
    teacher's answers re-tokenized by the student's tokenizer."""
    from kubedistill.artifacts import STUDENT_MODEL, TEACHER_MODEL
    from kubedistill_jobs.genai_export import ensure_build, precision_for
    from kubedistill_jobs.generation_eval import (
        ANSWER_TOKENS,
        Answer,
        answer_quality,
        generation_routing,
        timed_generate,
    )

    tokenizer, teacher_tokenizer = tokenizers["student"], tokenizers["teacher"]
    same_tokens = teacher_tokenizer.get_vocab() == tokenizer.get_vocab()
    prompts, references = _eval_prompts(spec, rows, tokenizer)
    model_prompts = {name: [p for p, _ in prompts] for name in ("teacher", "student", "student_quantized")}
    if not same_tokens:  # the same prompt texts, in the teacher's tokens
        model_prompts["teacher"] = [p for p, _ in _eval_prompts(spec, rows, teacher_tokenizer)[0]] \
            if spec.task.prompt is not None else \
            [teacher_tokenizer(tokenizer.decode(p), add_special_tokens=False)["input_ids"] for p, _ in prompts]
    primary = spec.evaluation.generation_metric()
    scored = primary is not None
    sequence_level = spec.distillation.sequence_level
    max_tokens = sequence_level.max_new_tokens if sequence_level is not None else ANSWER_TOKENS
    precision = {"teacher": "fp32", "student_quantized": precision_for(spec.compression.quantization)}
    builds = {"teacher": ensure_build(layout.teacher, layout.genai / TEACHER_MODEL, "fp32"),
              "student_quantized": ensure_build(layout.student, layout.genai / STUDENT_MODEL,
                                                precision["student_quantized"])}
    if scored:
        precision["student"] = "fp32"
        builds["student"] = builds["student_quantized"] if precision["student_quantized"] == "fp32" else \
            ensure_build(layout.student, layout.genai / f"{STUDENT_MODEL}-fp32", "fp32")
    answers, speed = {}, {}
    for name, folder in builds.items():
        answers[name], speed[name] = timed_generate(folder, model_prompts[name], max_tokens)
    decoders = {"teacher": teacher_tokenizer, "student": tokenizer, "student_quantized": tokenizer}
    texts = {n: [decoders[n].decode(a.ids, skip_special_tokens=True).strip() for a in found]
             for n, found in answers.items()}
    if spec.task.prompt is None:  # the continuations of the texts are the references
        references, source = [tokenizer.decode(r, skip_special_tokens=True).strip() for _, r in prompts], \
            "the texts' continuations"
    else:
        source = "dataset.referenceField" if references is not None else "the teacher's answers"
    reference_ids = None if spec.task.prompt is not None and references is None else [r for _, r in prompts]
    # the frontier compares token ids: the teacher's answers in the student's tokens (only the student's
    # log-probabilities are read, so the teacher's, per its own tokens, stay as they were)
    teacher_answers = answers["teacher"] if same_tokens else [
        Answer(tokenizer(teacher_tokenizer.decode(a.ids), add_special_tokens=False)["input_ids"], a.logprobs)
        for a in answers["teacher"]]
    quality = None
    if primary is not None:  # the frontier in the job's own terms: the primary metric on the decoded answers
        scores = answer_quality(texts["student_quantized"], texts["teacher"], references, primary)
        quality = (*scores, f"{source} ({primary})")
    routing, _ = generation_routing(answers["student_quantized"], teacher_answers, reference_ids, target,
                                    quality=quality)
    report = None
    if scored:
        report = GenerationEval(
            prompts=len(prompts), max_new_tokens=max_tokens, precision=precision,
            reference=source,
            tokens_per_second={n: round(v, 2) for n, v in speed.items()},
            speedup=round(speed["student_quantized"] / max(speed["teacher"], 1e-9), 2),
            examples=[GenerationExample(prompt=tokenizer.decode(p, skip_special_tokens=True)[-200:], reference=r,
                                        answers={n: texts[n][i] for n in texts})
                      for i, ((p, _), r) in enumerate(zip(prompts[:3], references or [None] * 3, strict=False))])
    return routing, Answered(texts, references, report)


def _eval_prompts(spec: DistillationJobSpec, rows: list[dict[str, Any]],
                  tokenizer: Any) -> tuple[list[tuple[list[int], list[int]]], list[str] | None]:
    """(prompt ids, reference ids) per held-out row, and the reference texts where the data has them. With
    task.prompt the rows are prompts (their references: dataset.referenceField); otherwise each text's first
    half is the prompt and the rest the reference (generation_eval.split_prompts)."""
    from kubedistill_jobs.generation_eval import split_prompts

    if spec.task.prompt is not None:
        references = [r.get("reference") for r in rows]
        known = all(r is not None for r in references)
        pairs = [(tokenizer(r["text"])["input_ids"],
                  tokenizer(r["reference"], add_special_tokens=False)["input_ids"] if known else [])
                 for r in rows]
        return pairs, [str(r) for r in references] if known else None
    pairs = split_prompts([tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in rows],
                          spec.task.max_length, tokenizer.decode)
    if not pairs:
        raise ValueError("eval.jsonl: no held-out text has 4 tokens or more to build the generation frontier from")
    return pairs, None


def _add_generation_metrics(spec: DistillationJobSpec, quality: Any, answered: Answered) -> None:
    """rouge_l, chrf and exact_match of every model's answers (against the references, else the teacher's
    answers), into quality.metrics; for the students also `teacher_rouge_l` (agreement with the teacher's
    answers); the retention of the primary metric when it is one of them."""
    from kubedistill_jobs.generation_eval import answer_scores, rouge_l

    primary = spec.evaluation.generation_metric()
    if primary is None or answered.report is None:
        return
    teacher = answered.answers["teacher"]
    gold = answered.references if answered.references is not None else teacher
    for name, texts in answered.answers.items():
        quality.metrics[name].update(answer_scores(texts, gold))
        if name != "teacher":
            quality.metrics[name]["teacher_rouge_l"] = float(np.mean([rouge_l(a, t) for a, t in
                                                                     zip(texts, teacher, strict=True)]))
    quality.retention = quality.metrics["student_quantized"][primary] / max(quality.metrics["teacher"][primary], 1e-12)
    quality.reference = f"generated answers against {answered.report.reference}"


def _first_tokens(tokenizer: Any, text: str, max_length: int) -> str:
    """The part of `text` the student is scored on (its first `max_length` tokens), so that the endpoint
    teacher scores the same span."""
    offsets = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        add_special_tokens=False)["offset_mapping"]
    return text[: offsets[-1][1]] if offsets else text


def evaluate_with_endpoint(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
                           result: CompressionResult, texts: list[str], *,
                           progress: Callable[[int, int], None] | None, settings: LatencySettings,
                           started: float | None = None) -> Report:
    """A remote endpoint teacher (causal-lm): the students on held-out text; the teacher's perplexity on the
    same texts from the endpoint (`echo`), when it scores prompts. No teacher graph: speedup, compression,
    agreement and the routing frontier are null, and without the teacher's perplexity so is retention."""
    from kubedistill_jobs.endpoint_teacher import EndpointClient, EndpointConfig
    from kubedistill_jobs.onnx_export import session

    max_length, total = spec.task.max_length, 4
    tokenizer = load_tokenizer(str(layout.student))
    paths = {"student": result.student_path(layout), "student_quantized": result.served_path(layout)}
    if progress:
        progress(0, total)
    stats = {n: causal_stats(session(p, settings.threads), tokenizer, texts, max_length) for n, p in paths.items()}
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
    wanted = spec.evaluation.metrics
    latency = _students_latency(paths, tokenizer, texts, max_length, settings, wanted, progress, total)
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
        perplexity_scope="texts",
        routing_note="no frontier: an endpoint teacher's per-token predictions are not compared",
        eval_samples=len(texts), **_compression_fields(result),
    )
    # the echo scored each token after the first: the texts' lengths in the endpoint's own tokens
    counted = [len(s) + 1 for s in scored if s] if teacher_metrics else None
    report = with_economics(spec, layout, report, texts, tokenizer, started, teacher_tokens=counted)
    return _finish(report, layout, progress, total)


def _students_latency(paths: dict[str, Path], tokenizer: Any, texts: list[str], max_length: int,
                      settings: LatencySettings, wanted: list[str], progress: Callable[[int, int], None] | None,
                      total: int) -> dict[str, dict[str, dict[str, float]]] | None:
    """The students' latency (no teacher graph to time here) when `evaluation.metrics` asks for it; progress
    moves from the quality step (1) to the report step (3) around it."""
    if progress:
        progress(1, total)
    latency = measure_latency(paths, {n: tokenizer for n in paths}, texts, max_length, settings) \
        if "latency" in wanted else None
    if progress:
        progress(3, total)
    return latency


def _compression_fields(result: CompressionResult) -> dict[str, Any]:
    """What the report says of the compression that made the served student."""
    return {"quantization": result.quantization, "onnx_max_abs_diff": result.max_abs_diff,
            "pruning": result.pruning}


def _finish(report: Report, layout: OutputLayout, progress: Callable[[int, int], None] | None,
            total: int) -> Report:
    write_report(report, layout)
    if progress:
        progress(total, total)
    return report


def evaluate_with_labeller(spec: DistillationJobSpec, layout: OutputLayout, model_version: str,
                           result: CompressionResult, rows: list[dict[str, Any]], *,
                           progress: Callable[[int, int], None] | None, settings: LatencySettings,
                           started: float | None = None) -> Report:
    """A language model labelled the data (`teacher.prompt`): its recorded eval-split distributions are the
    teacher's predictions; the students run as ONNX. No teacher graph: its size, latency, speedup and
    compression are null."""
    from kubedistill_jobs import teacher_record
    from kubedistill_jobs.onnx_export import session

    labels, max_length, total = spec.task.labels or [], spec.task.max_length, 4
    texts = [r["text"] for r in rows]
    recorded, meta = teacher_record.reuse(layout.teacher_outputs, texts, labels,
                                          teacher_record.read(layout.teacher_outputs)[0]["template_hash"])
    tokenizer = load_tokenizer(str(layout.student))
    paths = {"student": result.student_path(layout), "student_quantized": result.served_path(layout)}
    if progress:
        progress(0, total)
    gold_values = [r.get("label") for r in rows]
    gold = np.asarray(gold_values, dtype=np.int64) if all(g is not None for g in gold_values) else None
    logits = {"teacher": recorded.astype(np.float32),
              **{n: classify(session(p, settings.threads), tokenizer, texts, max_length) for n, p in paths.items()}}
    quality = classification_quality(logits, gold, len(labels), spec.evaluation.routing_target)
    wanted = spec.evaluation.metrics
    latency = _students_latency(paths, tokenizer, texts, max_length, settings, wanted, progress, total)
    primary = "accuracy" if quality.labelled else "agreement"
    reports = {n: _model_report(result.student_params, paths[n], listed_metrics(quality.metrics[n], wanted, primary),
                                latency[n] if latency else None) for n in paths}
    teacher = ModelReport(params=None, size_bytes=None, latency_ms=None, model=meta.get("model"),
                          metrics=listed_metrics(quality.metrics["teacher"], wanted, primary))
    sampling = meta.get("sampling", {})
    marker = json.loads(layout.stage_marker("teacher").read_text())
    ensemble, generation = None, None
    if marker.get("method") == "ensemble":
        ensemble = Ensemble.model_validate(marker["ensemble"])
        note = (f"{len(ensemble.members)} teachers combined ({ensemble.combination}); the combination's predictions "
                "on the eval split are those recorded in teacher_outputs/")
    else:
        note = (f"a language model labelled the data ({sampling.get('method')}"
                f"{', contextual calibration' if sampling.get('calibrated') else ''}); its predictions on the eval "
                "split are those recorded in teacher_outputs/")
        generation = TeacherGeneration(
            method=sampling.get("method", "unknown"), model=meta.get("model"), rows=marker["rows"],
            hard_labels=bool(marker.get("hard_labels")), calibrated=bool(marker.get("calibrated")),
            prior=marker.get("prior"), accuracy=marker.get("accuracy"),
            accuracy_uncalibrated=marker.get("accuracy_uncalibrated"),
            majority_baseline=marker.get("majority_baseline"),
            predicted_share=marker.get("predicted_share"), unmatched_answers=marker.get("unmatched_answers", 0),
            prompt_tokens=marker.get("prompt_tokens"), completion_tokens=marker.get("completion_tokens"),
            cost=marker.get("cost"), rows_per_second=marker.get("rows_per_second"), reused_from=marker.get("reused"))
    report = Report(
        task=spec.task.type, teacher=teacher, student=reports["student"], teacher_generation=generation,
        ensemble=ensemble,
        student_quantized=reports["student_quantized"], retention=float(quality.retention),
        agreement=quality.agreement, speedup=None, compression=None,
        routing=routing_report(quality.frontiers, spec.evaluation.routing_target, quality.reference)
        if quality.frontiers else None,
        gate=gate(float(quality.retention), spec.evaluation.gate.min_retention), model_version=model_version,
        labelled=quality.labelled, latency_settings=settings.method(), quality_reference=quality.reference,
        teacher_note=note, quantization_accuracy_drop=quality.quantization_accuracy_drop,
        routing_note=quality.routing_note, eval_samples=len(rows), quantization=result.quantization,
        onnx_max_abs_diff=result.max_abs_diff, pruning=result.pruning,
    )
    report = with_economics(spec, layout, report, texts, tokenizer, started)
    write_report(report, layout)
    if progress:
        progress(4, total)
    return report


def job_seconds(layout: OutputLayout, evaluation_seconds: float) -> float:
    """The job's measured duration: the stages finished before the evaluation (their markers; a resumed run
    counts the attempt that finished each) plus the evaluation so far."""
    total = evaluation_seconds
    for stage in STAGES[: STAGES.index("evaluate")]:
        marker = layout.stage_marker(stage)
        if marker.is_file():
            total += float(json.loads(marker.read_text()).get("seconds") or 0.0)
    return total


def with_economics(spec: DistillationJobSpec, layout: OutputLayout, report: Report, texts: list[str],
                   tokenizer: Any, started: float | None, *, teacher_tokens: list[int] | None = None) -> Report:
    """The report with `economics` when the spec asks for it (evaluation.economics), measured on `texts` with
    the student's `tokenizer` as the models see them (truncated at task.maxLength); `teacher_tokens`: each
    text's length in the teacher's own tokens, where known (a per-token price counts those)."""
    from kubedistill_jobs.economics import Measured, economics

    prices = spec.evaluation.economics
    if prices is None:
        return report
    pricing = spec.teacher.endpoint.pricing if spec.teacher.endpoint else None
    borrowed = pricing is not None and prices.teacher_price_per_hour is None \
        and prices.teacher_price_per_million_input_tokens is None
    if borrowed:
        assert pricing is not None
        prices = prices.model_copy(update={"teacher_price_per_million_input_tokens": pricing.input_per_million,
                                           "teacher_price_per_million_output_tokens": pricing.output_per_million})
    max_length = spec.task.max_length
    lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    mean_tokens = float(np.mean(lengths)) if lengths else None
    elapsed = time.monotonic() - started if started is not None else 0.0
    measured = Measured(input_tokens_per_request=mean_tokens, job_seconds=job_seconds(layout, elapsed),
                        tokens_per_item=mean_tokens if spec.task.type == "causal-lm" else None,
                        teacher_input_tokens_per_request=float(np.mean(teacher_tokens)) if teacher_tokens else None)
    econ = economics(prices, report, measured)
    if borrowed:
        econ.notes.append("the teacher's per-token prices are teacher.endpoint.pricing's")
    return report.model_copy(update={"economics": econ})


def write_report(report: Report, layout: OutputLayout) -> None:
    from kubedistill_jobs import render

    layout.report_json.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    history = None
    if layout.train_report.is_file():
        history = json.loads(layout.train_report.read_text()).get("history")
    plots = render.plots(report, history, layout.plots)
    relative = {k: Path(v).relative_to(layout.root) for k, v in plots.items()}
    layout.report_md.write_text(render.markdown(report, relative))
