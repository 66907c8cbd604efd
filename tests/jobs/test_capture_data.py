"""dataset.capture: captured traffic mixed into the training rows by the stated ratio, a held-out share for the
comparison with the served student, no text both trained on and scored, and bad settings refused by field."""

from __future__ import annotations

import pytest
from kubedistill_jobs import data

from kubedistill.api import ManifestError, parse_resource
from kubedistill.api.distillationjob import DistillationJob
from kubedistill.capture import CapturedAnswer, CaptureRecord, capture_file_name

from .conftest import job_manifest, sentiment_rows, write_jsonl


def write_capture(folder, records: list[CaptureRecord], per_file: int = 25) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(records), per_file):
        name = capture_file_name(1.8e9 + start, "router_1", start // per_file + 1)
        (folder / name).write_text("".join(r.to_line() for r in records[start:start + per_file]))


def escalated(text: str, teacher: str, student: str, version: str = "job-v1") -> CaptureRecord:
    return CaptureRecord(time=1.8e9, kind="escalated", task="sequence-classification", model="tiny",
                         model_version=version, text=text, student=CapturedAnswer(label=student, confidence=0.4),
                         teacher=CapturedAnswer(label=teacher, confidence=0.9))


def spec_with(tmp_path, capture: dict, rows: int = 80):
    path = write_jsonl(sentiment_rows(rows), tmp_path / "d.jsonl")
    manifest = job_manifest(tmp_path, tmp_path, path, dataset={"capture": capture})
    return DistillationJob.model_validate(manifest).spec


def traffic(n: int) -> list[CaptureRecord]:
    # The served student says "neg" to all; the teacher says "pos" to two thirds.
    return [escalated(f"captured request number {i}", "pos" if i % 3 else "neg", "neg") for i in range(n)]


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_captured_rows_make_up_the_stated_share_of_training(tmp_path, ratio):
    write_capture(tmp_path / "cap", traffic(60))
    spec = spec_with(tmp_path, {"uri": f"file://{tmp_path}/cap", "ratio": ratio, "evalFraction": 0.25})
    split = data.load_split(spec)
    captured = [r for r in split.train if r["text"].startswith("captured")]
    original = [r for r in split.train if not r["text"].startswith("captured")]
    assert len(original) == 60  # every original training row is kept (80 rows, evalFraction 0.25)
    assert len(captured) / len(split.train) == pytest.approx(ratio, abs=0.01)
    assert split.capture is not None and split.capture["share"] == pytest.approx(ratio, abs=0.01)
    # The teacher's answer is the label.
    assert all(r["label"] == (1 if int(r["text"].split()[-1]) % 3 else 0) for r in captured)
    # 15 of the 60 captured rows are held out, never trained on, and carry the served student's answer.
    assert len(split.capture_eval) == 15
    held = {r["text"] for r in split.capture_eval}
    assert not held & {r["text"] for r in split.train}
    assert all(r["served_label"] == 0 and r["served_version"] == "job-v1" for r in split.capture_eval)
    assert split.eval == data.load_split(spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"capture": None})})).eval  # the original eval split is unchanged: reports stay comparable


def test_ratio_one_trains_on_captured_rows_only_and_zero_compares_only(tmp_path):
    write_capture(tmp_path / "cap", traffic(60))
    only = data.load_split(spec_with(tmp_path, {"uri": f"file://{tmp_path}/cap", "ratio": 1.0}))
    assert all(r["text"].startswith("captured") for r in only.train) and len(only.train) == 60 - 18
    none = data.load_split(spec_with(tmp_path, {"uri": f"file://{tmp_path}/cap", "ratio": 0.0}))
    assert not any(r["text"].startswith("captured") for r in none.train)
    assert len(none.capture_eval) == 18


def test_captured_texts_in_the_eval_split_are_not_trained_on_and_a_cut_line_is_skipped(tmp_path):
    rows = sentiment_rows(80)
    path = write_jsonl(rows, tmp_path / "d.jsonl")
    base = DistillationJob.model_validate(job_manifest(tmp_path, tmp_path, path)).spec
    eval_texts = [r["text"] for r in data.load_split(base).eval]
    records = traffic(40) + [escalated(t, "pos", "neg") for t in eval_texts[:5]]
    write_capture(tmp_path / "cap", records, per_file=100)
    with (tmp_path / "cap").joinpath(sorted(p.name for p in (tmp_path / "cap").iterdir())[-1]).open("a") as f:
        f.write('{"v": 1, "time": 1.0, "kind": "esc')  # a file cut short by a crash
    spec = DistillationJob.model_validate(job_manifest(tmp_path, tmp_path, path, dataset={
        "capture": {"uri": f"file://{tmp_path}/cap", "ratio": 0.5}})).spec
    split = data.load_split(spec)
    trained = {r["text"] for r in split.train}
    assert not trained & set(eval_texts)
    assert split.capture["unreadable_lines"] == 1
    assert split.capture["records"] == 45


def test_records_with_labels_outside_the_task_are_dropped_and_counted(tmp_path):
    write_capture(tmp_path / "cap", traffic(30) + [escalated(f"odd {i}", "sports", "neg") for i in range(4)])
    split = data.load_split(spec_with(tmp_path, {"uri": f"file://{tmp_path}/cap", "ratio": 0.2}))
    assert split.capture["dropped"] == {"teacher answer missing or not in task.labels": 4}


def test_an_empty_capture_and_a_missing_folder_are_refused_naming_the_field(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.InputError, match=r"dataset.capture.uri: .* holds no usable captured rows"):
        data.load_split(spec_with(tmp_path, {"uri": f"file://{tmp_path}/empty", "ratio": 0.2}))
    with pytest.raises(data.InputError, match=r"dataset.capture.uri: .*no such folder"):
        data.load_split(spec_with(tmp_path, {"uri": f"file://{tmp_path}/nowhere", "ratio": 0.2}))


def test_a_deployment_reference_needs_a_cluster(tmp_path):
    spec = spec_with(tmp_path, {"studentDeploymentRef": {"name": "news"}, "ratio": 0.2})
    with pytest.raises(data.InputError, match=r"dataset.capture.studentDeploymentRef: .* set dataset.capture.uri"):
        data.load_split(spec)


@pytest.mark.parametrize(("capture", "field", "says"), [
    ({"uri": "http://host/capture", "ratio": 0.2}, "dataset.capture.uri", "pvc://"),
    ({"uri": "hf://org/capture", "ratio": 0.2}, "dataset.capture.uri", "s3://"),
    ({"uri": "file:///c", "ratio": 1.5}, "dataset.capture.ratio", "less than or equal to 1"),
    ({"uri": "file:///c", "ratio": -0.1}, "dataset.capture.ratio", "greater than or equal to 0"),
    ({"uri": "file:///c"}, "dataset.capture.ratio", "Field required"),
    ({"ratio": 0.2}, "dataset.capture", "exactly one of studentDeploymentRef and uri"),
    ({"uri": "file:///c", "studentDeploymentRef": {"name": "x"}, "ratio": 0.2}, "dataset.capture", "exactly one"),
])
def test_bad_capture_settings_are_refused_naming_the_field(tmp_path, capture, field, says):
    manifest = job_manifest(tmp_path, tmp_path, tmp_path / "d.jsonl", dataset={"capture": capture})
    with pytest.raises(ManifestError) as error:
        parse_resource(manifest)
    assert f"spec.{field}" in str(error.value) and says in str(error.value)
