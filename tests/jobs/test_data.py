"""The data stage: sources, field checks, label mapping, deterministic split, and its errors."""

from __future__ import annotations

import json

import pytest
from kubedistill_jobs import data

from kubedistill.api.distillationjob import DistillationJob

from .conftest import job_manifest, sentiment_rows, write_jsonl


def _spec(tmp_path, path, **overrides):
    return DistillationJob.model_validate(job_manifest(tmp_path, tmp_path, path, **overrides)).spec


def test_jsonl_with_string_labels_maps_to_label_indices(tmp_path):
    path = write_jsonl(sentiment_rows(40), tmp_path / "d.jsonl")
    split = data.load_split(_spec(tmp_path, path))
    assert len(split.train) == 30 and len(split.eval) == 10
    assert all(r["label"] in (0, 1) and r["text"] for r in split.train + split.eval)


def test_split_is_deterministic_by_seed(tmp_path):
    path = write_jsonl(sentiment_rows(40), tmp_path / "d.jsonl")
    first = data.load_split(_spec(tmp_path, path))
    again = data.load_split(_spec(tmp_path, path))
    other = data.load_split(_spec(tmp_path, path, training={"seed": 7}))
    assert first == again
    assert first.eval != other.eval


def test_repeated_texts_are_dropped_so_no_eval_text_was_trained_on(tmp_path):
    rows = sentiment_rows(40)
    path = write_jsonl(rows + rows[:15], tmp_path / "d.jsonl")
    split = data.load_split(_spec(tmp_path, path))
    assert split.duplicates == 15
    assert len(split.train) + len(split.eval) == 40
    assert not {r["text"] for r in split.train} & {r["text"] for r in split.eval}


def test_label_folders_csv_and_integer_labels(tmp_path):
    for label in ("pos", "neg"):
        (tmp_path / "folders" / label).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "folders" / label / f"{i}.txt").write_text(f"{label} text {i}")
    split = data.load_split(_spec(tmp_path, tmp_path / "folders", training={"batchSize": 2}))
    assert {r["label"] for r in split.train + split.eval} == {0, 1}
    assert all(r["text"].startswith(("pos", "neg")) for r in split.train)
    assert all((r["label"] == 1) == r["text"].startswith("pos") for r in split.train + split.eval)

    csv = tmp_path / "d.csv"
    csv.write_text("body,y\n" + "".join(f"text number {i},{i % 2}\n" for i in range(20)))
    spec = _spec(tmp_path, csv, dataset={"textField": "body", "labelField": "y"}, training={"batchSize": 2})
    split = data.load_split(spec)
    assert {r["label"] for r in split.train} == {0, 1}


def test_chat_yaml_conversations_become_texts(tmp_path):
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "a.yml").write_text("conversations:\n- - Hello\n  - Hi there\n- - How are you?\n  - Fine\n")
    rows = data.read_rows(f"file://{tmp_path / 'chat'}")
    assert rows == [{"text": "User: Hello\nAssistant: Hi there"}, {"text": "User: How are you?\nAssistant: Fine"}]


def test_jsonl_roundtrip(tmp_path):
    rows = [{"text": "é ü", "label": 1}, {"text": "x"}]
    data.write_jsonl(rows, tmp_path / "x.jsonl")
    assert data.read_jsonl(tmp_path / "x.jsonl") == rows
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0]) == rows[0]


@pytest.mark.parametrize(
    ("rows", "overrides", "field"),
    [
        ([{"body": "x", "label": "pos"}] * 10, {}, "dataset.textField"),
        ([{"text": "x", "y": "pos"}] * 10, {"dataset": {"labelField": "category"}}, "dataset.labelField"),
        ([{"text": "x", "label": "maybe"}] * 10, {}, "dataset.labelField"),
        ([{"text": "x", "label": 5}] * 10, {}, "dataset.labelField"),
        ([{"text": "x", "label": "pos"}] * 3, {"dataset": {"evalFraction": 0.1}}, "dataset.evalFraction"),
        ([{"text": f"x{i}", "label": "pos"} for i in range(20)], {"training": {"batchSize": 64}},
         "training.batchSize"),
    ],
    ids=["missing-text-field", "missing-label-field", "unknown-label", "label-out-of-range", "empty-eval-split",
         "batch-larger-than-data"],
)
def test_bad_data_is_refused_naming_the_field(tmp_path, rows, overrides, field):
    path = write_jsonl(rows, tmp_path / "d.jsonl")
    with pytest.raises(data.DataError, match=field.replace(".", r"\.")):
        data.load_split(_spec(tmp_path, path, **overrides))


def test_unknown_dataset_path_is_refused(tmp_path):
    with pytest.raises(data.DataError, match=r"dataset\.uri: .*no such file"):
        data.load_split(_spec(tmp_path, tmp_path / "missing.jsonl"))
    with pytest.raises(data.DataError, match=r"dataset\.uri"):
        data.read_rows("pkg://no-such-package-xyz/data")
