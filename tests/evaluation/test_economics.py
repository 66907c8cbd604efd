"""evaluation.economics: every figure against a hand computation, missing inputs named, the report's section,
plot and status headline."""

from __future__ import annotations

import json
import shutil

import pytest
from kubedistill_jobs import render
from kubedistill_jobs.cli import print_summary
from kubedistill_jobs.economics import Measured, economics
from kubedistill_jobs.evaluate import job_seconds, with_economics, write_report
from kubedistill_jobs.models import load_tokenizer
from kubedistill_jobs.pipeline import RunResult
from pydantic import ValidationError
from rich.console import Console

from kubedistill.api.distillationjob import EconomicsSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.report import FrontierPoint, Gate, Latency, ModelReport, Report, Routing, job_results

from .conftest import make_spec


def _model(items_per_second: float | None) -> ModelReport:
    throughput = None if items_per_second is None else {"batch1": items_per_second / 4, "batch32": items_per_second}
    return ModelReport(params=1, size_bytes=1, metrics={"accuracy": 0.9}, latency_ms=Latency(p50=1.0, p95=2.0),
                       throughput=throughput)


def _report(task: str, student_rate: float | None, teacher_rate: float | None, escalation: float | None) -> Report:
    frontier = [FrontierPoint(threshold=0.0, escalation_rate=0.0, accuracy=0.90),
                FrontierPoint(threshold=0.5, escalation_rate=escalation or 0.1, accuracy=0.95),
                FrontierPoint(threshold=1.0, escalation_rate=1.0, accuracy=0.96)]
    routing = None if escalation is None else Routing(
        frontier=frontier, recommended_threshold=0.5, target=0.99, recommended=frontier[1], teacher_accuracy=0.96,
        student_accuracy=0.90)
    return Report(task=task, teacher=_model(teacher_rate), student=_model(student_rate),  # type: ignore[arg-type]
                  student_quantized=_model(student_rate), retention=0.94, agreement=0.9, speedup=16.0,
                  compression=5.0, routing=routing, gate=Gate(min_retention=0.9, passed=True))


def test_self_hosted_teacher_by_hand():
    spec = EconomicsSpec(teacher_price_per_hour=0.90, student_price_per_hour=0.36, utilization=0.5,
                         requests_per_day=1_000_000, ray_cluster_price_per_hour=3.6)
    econ = economics(spec, _report("sequence-classification", 400.0, 25.0, 0.1),
                     Measured(input_tokens_per_request=80.0, job_seconds=1800.0))
    # student: 0.36 / (3600 × 400 × 0.5) = 5e-7 per request; teacher: 0.90 / (3600 × 25 × 0.5) = 2e-5
    assert econ.student_per_million_requests.value == pytest.approx(0.5)
    assert econ.teacher_per_million_requests.value == pytest.approx(20.0)
    assert econ.cascade_per_million_requests.value == pytest.approx(0.5 + 0.1 * 20.0)  # 2.5
    assert econ.cost_ratio.value == pytest.approx(8.0)
    # (20 − 2.5) per 1M × 1M requests a day = 17.5 a day; × 365.25 / 12 days
    assert econ.monthly_saving.value == pytest.approx(17.5 * 30.4375)
    assert econ.job_cost.value == pytest.approx(3.6 * 0.5)
    assert econ.payback_days.value == pytest.approx(1.8 / 17.5)
    assert econ.throughput_batch == "batch32"
    assert econ.teacher_per_million_requests.inputs == ["teacherPricePerHour", "utilization"]
    assert econ.teacher_per_million_requests.measured == ["teacher_items_per_second"]
    assert "escalation_rate" in econ.cascade_per_million_requests.measured
    assert econ.payback_days.inputs == ["rayClusterPricePerHour", "requestsPerDay", "studentPricePerHour",
                                        "teacherPricePerHour", "utilization"]
    assert econ.measured["job_seconds"] == 1800.0 and econ.inputs["teacherPricePerHour"] == 0.9
    assert [p.cost_per_million_requests for p in econ.frontier] == pytest.approx([0.5, 2.5, 20.5])
    results = job_results(_report("sequence-classification", 400.0, 25.0, 0.1).model_copy(
        update={"economics": econ}), "file:///out")
    assert (results.cost_ratio, results.payback_days) == (8.0, pytest.approx(0.1))


def test_api_teacher_for_a_causal_lm_by_hand():
    spec = EconomicsSpec(teacher_price_per_million_input_tokens=3.0, teacher_price_per_million_output_tokens=15.0,
                         output_tokens_per_request=50, student_price_per_hour=1.8, requests_per_day=10_000,
                         ray_cluster_price_per_hour=2.0, currency="EUR")
    econ = economics(spec, _report("causal-lm", 40.0, None, 0.2),
                     Measured(input_tokens_per_request=200.0, job_seconds=7200.0, tokens_per_item=125.0))
    # teacher: 200 × 3 / 1M + 50 × 15 / 1M = 0.00135 per request
    assert econ.teacher_per_million_requests.value == pytest.approx(1350.0)
    assert econ.teacher_per_million_requests.unit == "EUR per 1M requests"
    # student: (200 + 50) / 125 = 2 timed items per request, 1.8 / (3600 × 40) each
    assert econ.student_per_million_requests.value == pytest.approx(25.0)
    assert econ.cascade_per_million_requests.value == pytest.approx(25.0 + 0.2 * 1350.0)  # 295
    assert econ.cost_ratio.value == pytest.approx(1350.0 / 295.0)
    assert econ.payback_days.value == pytest.approx(2.0 * 2 / ((1350.0 - 295.0) / 1e6 * 10_000))
    assert any("lower bound" in note for note in econ.notes)
    assert any("counted with the student's tokenizer" in note for note in econ.notes)  # no count of its own
    # the teacher's own count of the same texts, where measured, is what its price applies to; the student's
    # throughput still converts the student's tokens
    own = economics(spec, _report("causal-lm", 40.0, None, 0.2),
                    Measured(input_tokens_per_request=200.0, job_seconds=7200.0, tokens_per_item=125.0,
                             teacher_input_tokens_per_request=160.0))
    assert own.teacher_per_million_requests.value == pytest.approx(160 * 3.0 + 50 * 15.0)
    assert own.teacher_per_million_requests.measured == ["teacher_input_tokens_per_request",
                                                         "output_tokens_per_request"]
    assert own.student_per_million_requests.value == pytest.approx(25.0)
    assert not any("student's tokenizer" in note for note in own.notes)
    assert any("priced on its own tokens (160.0 per request)" in note for note in own.notes)
    # a cascade that escalates everything costs more than the teacher alone: said, even with no job cost to pay back
    everything = economics(spec.model_copy(update={"ray_cluster_price_per_hour": None}),
                           _report("causal-lm", 40.0, None, 1.0),
                           Measured(input_tokens_per_request=200.0, job_seconds=7200.0, tokens_per_item=125.0))
    assert everything.monthly_saving.value is not None and everything.monthly_saving.value < 0
    assert "the cascade costs as much as the teacher or more (it escalates 100.0% of requests)" in everything.notes


def test_missing_inputs_are_named_not_guessed():
    spec = EconomicsSpec(teacher_price_per_million_input_tokens=3.0, teacher_price_per_million_output_tokens=15.0)
    econ = economics(spec, _report("causal-lm", 40.0, None, 0.2),
                     Measured(input_tokens_per_request=200.0, job_seconds=60.0, tokens_per_item=125.0))
    assert econ.teacher_per_million_requests.value is None
    assert econ.teacher_per_million_requests.missing == ["outputTokensPerRequest"]
    assert econ.student_per_million_requests.value is None and econ.cost_ratio.value is None
    assert "requestsPerDay" in econ.monthly_saving.missing and econ.job_cost.missing == ["rayClusterPricePerHour"]
    # no frontier (an endpoint teacher): the student alone is compared with the teacher
    priced = EconomicsSpec(teacher_price_per_hour=1.0, student_price_per_hour=0.1)
    alone = economics(priced, _report("sequence-classification", 100.0, 10.0, None),
                      Measured(input_tokens_per_request=10.0, job_seconds=None))
    assert alone.cascade_per_million_requests.value is None
    # (1.0 / 10 items/s) over (0.1 / 100 items/s)
    assert alone.cost_ratio.value == pytest.approx(100.0) and "student-only" in alone.cost_ratio.unit
    # a teacher priced per hour whose throughput was not measured
    blind = economics(priced, _report("sequence-classification", 100.0, None, 0.1),
                      Measured(input_tokens_per_request=10.0, job_seconds=None))
    assert blind.teacher_per_million_requests.value is None
    assert "latency in evaluation.metrics" in blind.teacher_per_million_requests.missing[0]


def test_the_spec_refuses_two_teacher_prices_and_half_a_token_price():
    with pytest.raises(ValidationError, match=r"per token .* or per hour"):
        EconomicsSpec(teacher_price_per_hour=1.0, teacher_price_per_million_input_tokens=1.0,
                      teacher_price_per_million_output_tokens=1.0)
    with pytest.raises(ValidationError, match="teacherPricePerMillionOutputTokens"):
        EconomicsSpec(teacher_price_per_million_input_tokens=1.0)
    with pytest.raises(ValidationError, match="utilization"):
        EconomicsSpec.model_validate({"utilization": 0})


def test_a_classification_report_gets_its_section_plot_and_headline(evaluated, tmp_path):
    spec, layout, report = evaluated
    shutil.copytree(layout.root, tmp_path / "job")
    job = OutputLayout(tmp_path / "job")
    marker = json.loads((layout.stage_marker("compress")).read_text()) if layout.stage_marker("compress").is_file() \
        else None
    job.stage_marker("train").parent.mkdir(parents=True, exist_ok=True)
    job.stage_marker("train").write_text(json.dumps({"stage": "train", "seconds": 100.0}))
    job.stage_marker("data").write_text(json.dumps({"stage": "data", "seconds": 20.0}))
    assert job_seconds(job, 5.0) == pytest.approx(125.0 + (marker or {}).get("seconds", 0.0))
    priced = make_spec(evaluation={"economics": {"teacherPricePerHour": 2.0, "studentPricePerHour": 0.5,
                                                 "requestsPerDay": 50000, "rayClusterPricePerHour": 4.0}})
    tokenizer = load_tokenizer(str(job.student))
    texts = [json.loads(line)["text"] for line in (job.data / "eval.jsonl").read_text().splitlines()]
    econ_report = with_economics(priced, job, report, texts, tokenizer, started=None)
    econ = econ_report.economics
    assert econ is not None and econ.measured["input_tokens_per_request"] == pytest.approx(
        sum(len(tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in texts) / len(texts))
    teacher_rate = report.teacher.throughput["batch32"]
    assert econ.teacher_per_million_requests.value == pytest.approx(2.0 / (3600 * teacher_rate) * 1e6)
    assert econ.measured["escalation_rate"] == report.routing.recommended.escalation_rate
    assert econ.job_cost.value == pytest.approx(4.0 * econ.measured["job_seconds"] / 3600)
    write_report(econ_report, job)
    assert (job.plots / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = job.report_md.read_text()
    assert "## Economics" in md and "plots/cost_quality.png" in md and "teacherPricePerHour" in md
    assert json.loads(job.report_json.read_text())["economics"]["cost_ratio"]["value"] == econ.cost_ratio.value
    results = job_results(econ_report, "file:///out")
    assert results.cost_ratio == round(econ.cost_ratio.value, 2)
    assert with_economics(spec, job, report, texts, tokenizer, started=None).economics is None  # not asked for
    # An endpoint teacher's own pricing prices it when economics gives no teacher price.
    endpoint = make_spec(teacher={"endpoint": {"url": "https://llm.example/v1", "model": "big", "api": "chat",
                                               "pricing": {"inputPerMillion": 0.5, "outputPerMillion": 4.0}},
                                  "prompt": {}},
                         student={"uri": "/models/student"}, evaluation={"economics": {"studentPricePerHour": 0.5}})
    borrowed = with_economics(endpoint, job, report, texts, tokenizer, started=None).economics
    tokens = econ.measured["input_tokens_per_request"]
    assert borrowed.teacher_per_million_requests.value == pytest.approx(tokens * 0.5)  # a label: no output tokens
    assert any("teacher.endpoint.pricing" in note for note in borrowed.notes)
    assert "## Economics" not in render.markdown(report, {})
    console = Console(record=True, width=200)
    print_summary(console, RunResult(stages={}, report=econ_report), "/out")
    assert f"cost ratio {econ.cost_ratio.value:.2f}x" in console.export_text()
