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
    spec = _spec(tmp_path, csv, dataset={"textField": "body", "labelField": "y", "labelEncoding": "index"},
                 training={"batchSize": 2})
    split = data.load_split(spec)
    assert {r["label"] for r in split.train} == {0, 1}
    assert all(r["label"] == int(r["text"].split()[-1]) % 2 for r in split.train + split.eval)
    # without labelEncoding: index the numbers are names, which task.labels does not have: refused, with the fix
    with pytest.raises(data.DataError, match=r"dataset\.labelField: .*set dataset\.labelEncoding: index"):
        data.load_split(_spec(tmp_path, csv, dataset={"textField": "body", "labelField": "y"},
                              training={"batchSize": 2}))


def test_chat_yaml_conversations_become_texts(tmp_path):
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "a.yml").write_text("conversations:\n- - Hello\n  - Hi there\n- - How are you?\n  - Fine\n")
    rows = data.read_rows(f"file://{tmp_path / 'chat'}")
    assert [r["text"] for r in rows] == ["User: Hello\nAssistant: Hi there", "User: How are you?\nAssistant: Fine"]
    assert rows[0]["messages"] == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]


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


STARS = ["1", "2", "3", "4", "5"]


def _star_rows(n: int) -> list[dict]:
    return [{"text": f"review number {i}", "label": str(1 + i % 5)} for i in range(n)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl-numbers", "jsonl-strings"])
def test_numeric_labels_are_matched_by_name_in_every_format(tmp_path, fmt):
    # star ratings 1-5 with task.labels "1".."5": the class of a row is the rating it holds, never the
    # class at that position (which moved every row up one class, and refused every 5)
    rows = _star_rows(50)
    if fmt == "csv":
        path = tmp_path / "d.csv"
        rows[7]["label"] = ""  # an empty cell: read as NaN in a column of numbers
        path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    else:
        numbers = fmt == "jsonl-numbers"
        path = write_jsonl([{**r, "label": int(r["label"]) if numbers else r["label"]} for r in rows],
                           tmp_path / "d.jsonl")
    spec = _spec(tmp_path, path, task={"type": "sequence-classification", "labels": STARS, "maxLength": 16},
                 training={"batchSize": 4})
    split = data.load_split(spec)
    truth = {r["text"]: r["label"] for r in rows}
    assert len(split.train) + len(split.eval) == 50
    assert all(STARS[r["label"]] == truth[r["text"]] for r in split.train + split.eval if "label" in r)
    assert split.unlabelled == (1 if fmt == "csv" else 0)


def test_label_values_as_the_file_format_reads_them():
    labels = ["1", "2", "5", "true"]
    assert [data.label_index(v, labels, "name") for v in (5, 5.0, "5", " 5", True, 3, 5.5, None)] == \
        [2, 2, 2, 2, 3, None, None, None]
    assert [data.label_index(v, labels, "index") for v in (0, 3, "2", 4, -1, True, 1.0)] == [0, 3, 2, None, None,
                                                                                             None, 1]


def test_dropped_rows_are_counted_and_refused_above_the_limit(tmp_path):
    rows = _star_rows(100)
    rows[:3] = [{"text": None, "label": "1"}, {"Text": "under another key", "label": "2"},
                {"text": "  ", "label": "3"}]
    path = write_jsonl(rows, tmp_path / "d.jsonl")
    task = {"type": "sequence-classification", "labels": STARS, "maxLength": 16}
    split = data.load_split(_spec(tmp_path, path, task=task))
    assert len(split.train) + len(split.eval) == 97
    assert split.dropped == {"no text in 'text' (those rows have text under 'Text')": 3}

    with pytest.raises(data.DataError, match=r"dataset\.maxDroppedFraction: 3 of 100 rows \(3\.0%\) were dropped, "
                       r"more than 0\.02: 3 no text in 'text' \(those rows have text under 'Text'\)"):
        data.load_split(_spec(tmp_path, path, task=task, dataset={"maxDroppedFraction": 0.02}))


def test_a_label_column_under_another_name_is_refused_listing_the_columns(tmp_path):
    path = write_jsonl([{"text": f"t{i}", "category": "pos"} for i in range(40)], tmp_path / "d.jsonl")
    with pytest.raises(data.DataError, match=r"dataset\.labelField: column 'label' \(the default\) not in the data "
                       r"\(columns: category, text\); set labelField to the column"):
        data.load_split(_spec(tmp_path, path))
    split = data.load_split(_spec(tmp_path, path, dataset={"labelField": None}))  # unlabelled, as asked
    assert all("label" not in r for r in split.train)


def test_texts_that_no_file_or_tokenizer_can_hold_are_dropped_not_written(tmp_path):
    rows = [{"text": f"text {i}", "label": "pos"} for i in range(60)] + [{"text": "bad \ud800 text", "label": "neg"},
                                                                        {"text": ["a", "list"], "label": "neg"}]
    found = data.check_rows(rows, _spec(tmp_path, tmp_path).dataset, ["neg", "pos"])
    assert found.dropped == {data.NOT_UNICODE: 1, data.NOT_TEXT: 1} and len(found.rows) == 60
    data.write_jsonl(found.rows, tmp_path / "ok.jsonl")


def test_class_label_columns_read_as_their_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})  # not task.labels' order
    table = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]},
                                       features=features)
    table.to_parquet(tmp_path / "d.parquet")
    split = data.load_split(_spec(tmp_path, tmp_path / "d.parquet", training={"batchSize": 2}))
    assert all(r["label"] == (0 if int(r["text"][1:]) % 2 else 1) for r in split.train + split.eval)


def test_a_table_the_reader_cannot_parse_is_a_data_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\nnot json\n')
    with pytest.raises(data.DataError, match=r"dataset\.uri: cannot read .*d\.jsonl as json: JSON parse error"):
        data.read_rows(str(path))


def test_texts_longer_than_max_length_are_counted(tiny_models):
    from kubedistill_jobs import models

    tokenizer = models.load_tokenizer(str(tiny_models["bert"]))
    texts = ["good day", "the movie was very good", "bad " * 40]
    assert data.count_truncated(tokenizer, texts, 4) == 2
    assert data.count_truncated(tokenizer, texts, 64) == 0
