"""`kubedistill run --teacher-job`: a teacher.jobRef resolved from the referenced job's output folder or manifest,
refused (naming the flag or field) when that run is missing, another job's, unfinished, or failed its gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubedistill_jobs.runner import load_job, resolve_teacher_job

from kubedistill.api import DistillationJob
from kubedistill.artifacts import OutputLayout

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "teacher-assistant"


def model_report(accuracy: float) -> dict:
    return {"params": 10, "size_bytes": 40, "metrics": {"accuracy": accuracy}, "latency_ms": None}


def finished_run(tmp_path: Path, passed: bool = True, name: str = "bbc-news-assistant") -> tuple[Path, Path]:
    """An output folder as the assistant's run leaves it (its resolved spec, report, student), and a manifest
    whose spec.output.uri is that folder."""
    folder = tmp_path / "assistant-out"
    layout = OutputLayout(folder)
    doc = yaml.safe_load((EXAMPLES / "assistant.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["output"]["uri"] = str(folder)
    layout.student.mkdir(parents=True)
    (layout.student / "config.json").write_text("{}")
    layout.resolved_spec.write_text(yaml.safe_dump(doc))
    report = {"task": "sequence-classification", "teacher": model_report(0.97), "student": model_report(0.95),
              "student_quantized": model_report(0.95), "retention": 0.98 if passed else 0.9, "agreement": 0.95,
              "speedup": 5.0, "compression": 4.0, "routing": None,
              "gate": {"min_retention": 0.95, "passed": passed, "shortfall": 0.0 if passed else 0.05}}
    layout.report_json.write_text(json.dumps(report))
    manifest = tmp_path / "assistant.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return folder, manifest


def test_the_folder_or_the_manifest_resolves_the_reference(tmp_path):
    folder, manifest = finished_run(tmp_path)
    for given in (folder, manifest):
        job = load_job(EXAMPLES / "tiny.yaml", str(tmp_path / "tiny-out"), str(given))
        assert job.spec.teacher.job_ref is None and job.spec.teacher.uri == str(folder / "student")
        assert job.spec.student.architecture.num_layers == 1


def test_the_reference_needs_the_flag_and_the_flag_a_reference(tmp_path):
    with pytest.raises(ValueError, match=r"^teacher.jobRef: names DistillationJob bbc-news-assistant.*--teacher-job"):
        load_job(EXAMPLES / "tiny.yaml")
    folder, _ = finished_run(tmp_path)
    with pytest.raises(ValueError, match=r"^--teacher-job: this job's teacher is not a teacher.jobRef"):
        load_job(EXAMPLES / "tiny-direct.yaml", None, str(folder))


def test_a_run_that_cannot_teach_is_refused(tmp_path):
    tiny = DistillationJob.model_validate(yaml.safe_load((EXAMPLES / "tiny.yaml").read_text()))
    with pytest.raises(ValueError, match=r"^--teacher-job: .*nowhere: no such folder or manifest"):
        resolve_teacher_job(tiny, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"holds no distillationjob.yaml: not the output folder of a run"):
        resolve_teacher_job(tiny, str(tmp_path))

    folder, _ = finished_run(tmp_path / "other", name="someone-else")
    with pytest.raises(ValueError, match=r"is the output of DistillationJob someone-else, but teacher.jobRef.name"):
        resolve_teacher_job(tiny, str(folder))

    folder, _ = finished_run(tmp_path / "gated", passed=False)
    gated = r"did not pass its gate \(retention 0.9000 is 0.0500 below evaluation.gate.minRetention 0.95"
    with pytest.raises(ValueError, match=gated):
        resolve_teacher_job(tiny, str(folder))

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--teacher-job: .*report.json is neither a run's output folder"):
        resolve_teacher_job(tiny, str(tmp_path / "report.json"))

    folder, _ = finished_run(tmp_path / "unfinished")
    OutputLayout(folder).report_json.unlink()
    with pytest.raises(ValueError, match=r"has not finished .*run it to the end first"):
        resolve_teacher_job(tiny, str(folder))

    folder, _ = finished_run(tmp_path / "relabelled")
    spec = yaml.safe_load(OutputLayout(folder).resolved_spec.read_text())
    spec["spec"]["task"]["labels"] = ["a", "b"]
    OutputLayout(folder).resolved_spec.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"^teacher.jobRef.name: DistillationJob bbc-news-assistant has task.labels"):
        resolve_teacher_job(tiny, str(folder))
