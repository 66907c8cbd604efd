"""report.json, report.md and plots: the keys the issue lists, the gate, and an eval split without labels."""

from __future__ import annotations

import json
import shutil

import pytest
from kubedistill_jobs import render
from kubedistill_jobs.evaluate import evaluate, gate

from kubedistill.artifacts import OutputLayout
from kubedistill.report import Report, job_results, load_report

from .conftest import write_jsonl


def test_report_json_keys_and_types(evaluated):
    spec, layout, report = evaluated
    doc = json.loads(layout.report_json.read_text())
    assert load_report(layout.report_json.read_text()) == report
    assert doc["task"] == "sequence-classification"
    for name in ("teacher", "student", "student_quantized"):
        model = doc[name]
        assert isinstance(model["params"], int) and model["params"] > 0
        assert isinstance(model["size_bytes"], int) and model["size_bytes"] > 0
        assert {"accuracy", "macro_f1"} <= set(model["metrics"])
        assert all(isinstance(v, float) for v in model["metrics"].values())
        assert {"p50", "p95"} <= set(model["latency_ms"]) and model["latency_ms"]["p50"] > 0
        assert model["latency_ms"]["p95"] >= model["latency_ms"]["p50"]
        assert model["latency_ms_batch32"]["p50"] > 0 and model["throughput"]["batch32"] > 0
    for key in ("retention", "agreement", "speedup", "compression"):
        assert isinstance(doc[key], float)
    assert doc["student_quantized"]["size_bytes"] < doc["student"]["size_bytes"] < doc["teacher"]["size_bytes"]
    assert doc["compression"] == pytest.approx(doc["teacher"]["size_bytes"] / doc["student_quantized"]["size_bytes"])
    assert doc["retention"] == pytest.approx(
        doc["student_quantized"]["metrics"]["accuracy"] / doc["teacher"]["metrics"]["accuracy"])
    routing = doc["routing"]
    assert routing["target"] == spec.evaluation.routing_target
    assert isinstance(routing["recommended_threshold"], float)
    assert all({"threshold", "escalation_rate", "accuracy"} <= set(p) for p in routing["frontier"])
    assert set(routing["signals"]) == {"max-probability", "margin", "entropy"}
    assert doc["gate"]["min_retention"] == 0.95 and isinstance(doc["gate"]["passed"], bool)
    assert doc["gate"]["passed"] == (doc["retention"] >= 0.95)
    assert doc["model_version"] == "run-1"
    results = job_results(report, "file:///out")
    assert results.gate_passed == doc["gate"]["passed"] and results.escalation_rate is not None


def test_markdown_and_plots(evaluated):
    _, layout, _ = evaluated
    md = layout.report_md.read_text()
    assert "| teacher (fp32) |" in md and "| student (quantized) |" in md and "Recommended threshold" in md
    for name in ("routing_frontier.png", "training_curves.png", "comparison.png"):
        png = layout.plots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}" in md


def test_gate_pass_and_fail():
    assert gate(0.97, 0.95).passed
    assert gate(0.5, None).passed  # no gate configured
    failed = gate(0.91, 0.95)
    assert not failed.passed and failed.shortfall == pytest.approx(0.04)
    unknown = gate(None, 0.95)  # an endpoint teacher that cannot score prompts: no retention
    assert not unknown.passed and unknown.shortfall == 0.95
    assert gate(None, None).passed


def test_failed_gate_is_reported_with_its_shortfall(evaluated):
    _, _, report = evaluated
    failed = report.model_copy(update={"retention": 0.9, "gate": gate(0.9, 0.95)})
    assert failed.shortfall() == pytest.approx(0.05)
    assert job_results(failed, "file:///out").gate_passed is False
    assert "gate not met" in render.markdown(failed, {}) and "short by 0.05" in render.markdown(failed, {})


def test_serve_warns_before_serving_a_job_whose_gate_failed(evaluated, tmp_path):
    from kubedistill_router.local.serve import gate_warning

    _, _, report = evaluated
    assert gate_warning(tmp_path) == ""  # no report: nothing to say
    (tmp_path / "report.json").write_text(report.model_copy(update={"gate": gate(0.99, None)}).model_dump_json())
    assert gate_warning(tmp_path) == ""
    failed = report.model_copy(update={"retention": 0.9, "gate": gate(0.9, 0.95)})
    (tmp_path / "report.json").write_text(failed.model_dump_json(by_alias=True))
    warning = gate_warning(tmp_path)
    assert "did not pass its evaluation gate" in warning and "evaluation.gate.minRetention 0.95" in warning


def test_metrics_not_listed_are_left_out_and_latency_is_not_measured(evaluated, fast_latency, tmp_path):
    spec, layout, _ = evaluated
    shutil.copytree(layout.root, tmp_path / "job")
    only_f1 = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"metrics": ["macro_f1"]})})
    report = evaluate(only_f1, OutputLayout(tmp_path / "job"), "run-3", settings=fast_latency)
    for model in (report.teacher, report.student, report.student_quantized):
        assert set(model.metrics) == {"macro_f1", "accuracy"}  # accuracy: the primary metric, always kept
        assert model.latency_ms is None and model.latency_ms_batch32 is None and model.throughput is None
    assert report.speedup is None and report.compression is not None and report.retention > 0
    assert job_results(report, "file:///out").speedup is None
    assert "| student (quantized) |" in render.markdown(report, {})  # renders without latency


def test_eval_split_without_labels_gives_agreement_only(evaluated, fast_latency, tmp_path):
    spec, layout, _ = evaluated
    shutil.copytree(layout.root, tmp_path / "job")
    unlabelled = OutputLayout(tmp_path / "job")
    rows = [json.loads(line) for line in (layout.data / "eval.jsonl").read_text().splitlines()]
    write_jsonl(unlabelled.data / "eval.jsonl", [{"text": r["text"]} for r in rows])
    report = evaluate(spec, unlabelled, "run-2", settings=fast_latency)
    assert isinstance(report, Report)
    assert "accuracy" not in report.student_quantized.metrics
    assert report.retention == pytest.approx(report.student_quantized.metrics["agreement"])
    assert report.agreement == report.student_quantized.metrics["agreement"]
    assert report.labelled is False
    assert report.routing is not None and report.routing.reference == "teacher"
    assert "no gold labels" in unlabelled.report_md.read_text()


def test_a_causal_lms_served_frontier_is_the_generation_one_in_report_md_and_plots(evaluated, tmp_path):
    """The threshold a causal-LM export serves comes from the generation frontier: report.md and the frontier
    plot show that one, in its own quality, and no note that there is no frontier."""
    import math

    from kubedistill_jobs.generation_eval import Answer, answer_quality, generation_routing

    _, _, report = evaluated
    sure, unsure = [math.log(0.9)] * 3, [math.log(0.3)] * 3
    student = [Answer([1, 2], sure), Answer([3, 4], unsure), Answer([5, 6], sure)]
    teacher = [Answer([1, 2], sure)] * 3
    texts, gold = ["rates rise", "war ends", "talks fail"], ["rates rise", "rates rise", "talks fail"]
    scores = answer_quality(texts, ["rates rise"] * 3, gold, "rouge_l")
    routing, _ = generation_routing(student, teacher, None, target=0.99,
                                    quality=(*scores, "dataset.referenceField (rouge_l)"))
    causal = report.model_copy(update={"routing": None, "generation_routing": routing,
                                       "routing_note": "no frontier: teacher and student tokenize differently"})
    paths = render.plots(causal, None, tmp_path)
    assert paths["frontier"].is_file()
    text = render.markdown(causal, paths)
    assert "## Routing" in text and "quality: dataset.referenceField (rouge_l)" in text
    assert f"**{routing.recommended_threshold:.4f}**" in text and "cascade quality" in text
    assert "no frontier" not in text


def test_a_generation_report_without_latency_reads_right(evaluated):
    """`latency` not listed: sizes still shown, no latency claimed, the header's speedup is the generation one;
    an answer with line breaks stays one list item; a recommended point that escalates everything says so."""
    import math

    from kubedistill_jobs.generation_eval import Answer, answer_quality, generation_routing

    from kubedistill.report import GenerationEval, GenerationExample

    _, _, report = evaluated
    untimed = {name: getattr(report, name).model_copy(update={"latency_ms": None, "latency_ms_batch32": None,
                                                              "throughput": None})
               for name in ("teacher", "student", "student_quantized")}
    # the student is unsure and wrong everywhere: only the teacher meets the target
    unsure = [math.log(0.3)] * 2
    student = [Answer([3, 4], unsure)] * 3
    teacher = [Answer([1, 2], unsure)] * 3
    gold = ["rates rise", "war ends", "talks fail"]
    scores = answer_quality(["cats nap"] * 3, gold, gold, "rouge_l")
    routing, _ = generation_routing(student, teacher, None, target=0.99,
                                    quality=(*scores, "dataset.referenceField (rouge_l)"))
    assert routing.recommended is not None and routing.recommended.escalation_rate == 1.0
    generation = GenerationEval(prompts=3, max_new_tokens=8, reference="dataset.referenceField",
                                precision={"teacher": "fp32", "student_quantized": "int4", "student": "fp32"},
                                tokens_per_second={"teacher": 20.0, "student_quantized": 130.0, "student": 70.0},
                                speedup=6.5, examples=[GenerationExample(
                                    prompt="...", reference="Rates rise",
                                    answers={"teacher": "Rates rise\n\nThe Daily Mirror", "student": "Cats nap",
                                             "student_quantized": "Cats nap"})])
    causal = report.model_copy(update={**untimed, "task": "causal-lm", "speedup": None, "speedup_batch32": None,
                                       "routing": None, "generation_routing": routing, "generation": generation,
                                       "primary": "rouge_l", "perplexity_scope": "answers"})
    text = render.markdown(causal, {})
    row = next(line for line in text.splitlines() if line.startswith("| student (quantized) |"))
    assert f"| {report.student_quantized.params:,} | {report.student_quantized.size_bytes / 1e6:.2f} |" in row
    assert "Latency: not measured" in text and "intra-op threads" not in text
    assert "Speedup 6.50× (generation" in text and "Speedup –×" not in text
    assert "  - teacher (fp32): Rates rise ⏎ The Daily Mirror" in text
    assert "every request goes to the teacher" in text
    assert "Perplexity is over the reference answers' tokens" in text
