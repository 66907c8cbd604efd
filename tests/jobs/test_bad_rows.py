"""Generated bad rows at the data stage: a DataError naming the field, or the good rows exactly as they were;
never another exception, never a good row changed or lost."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubedistill_jobs import data

from kubedistill.api.distillationjob import DistillationJob

from .conftest import job_manifest

LABELS = ["1", "2", "3", "neg", "pos"]
GOOD = [{"text": f"a good row number {i}", "label": LABELS[i % len(LABELS)]} for i in range(40)]

# Every JSON value, and the Python values readers produce (NaN for an empty CSV cell, lone surrogates
# from the escape \ud800): text with every code point, surrogates included.
any_text = st.text(st.one_of(st.characters(exclude_categories=()), st.characters(min_codepoint=0xD800,
                                                                                   max_codepoint=0xDFFF)), max_size=12)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**20), st.floats(allow_nan=True), any_text,
                   st.sampled_from(["", "  ", "1", "5", "pos", "POS", " neg "]))
value = st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(any_text, scalar, max_size=2))
any_row = st.dictionaries(st.sampled_from(["text", "Text", "label", "category", "other"]), value, max_size=4)
# rows whose label is fine or absent, so that what their text does is what decides
text_row = st.fixed_dictionaries({"text": st.one_of(any_text, value)},
                                 optional={"label": st.sampled_from([None, *LABELS])})
bad_row = st.one_of(any_row, text_row)


def _dataset(**overrides):
    spec = job_manifest(Path("/tmp"), Path("/tmp"), Path("/tmp/d.jsonl"),
                        task={"type": "sequence-classification", "labels": LABELS, "maxLength": 16},
                        training={"batchSize": 2}, dataset=overrides)
    return DistillationJob.model_validate(spec).spec


def _check_good_rows_kept(found: data.Rows, n_bad: int) -> None:
    kept = [r for r in found.rows if r["text"].startswith("a good row number ")]
    assert kept == [{"text": g["text"], "label": LABELS.index(g["label"])} for g in GOOD]
    assert len(found.rows) + sum(found.dropped.values()) == len(GOOD) + n_bad
    for row in found.rows:  # what is kept can be written and tokenised
        assert isinstance(row["text"], str) and row["text"].strip()
        row["text"].encode("utf-8")
        assert row.get("label", 0) in range(len(LABELS))


@settings(max_examples=300, deadline=None)
@given(bad=st.lists(bad_row, max_size=8), at=st.integers(0, len(GOOD)),
       encoding=st.sampled_from(["name", "index"]))
@example(bad=[{"text": "lone \ud800"}, {"Text": "elsewhere", "label": "pos"}], at=3, encoding="name")
def test_generated_rows_are_refused_by_field_or_leave_good_rows_alone(bad, at, encoding):
    spec = _dataset(labelEncoding=encoding, maxDroppedFraction=1.0)
    rows = [dict(r) for r in GOOD[:at]] + bad + [dict(r) for r in GOOD[at:]]
    try:
        found = data.check_rows(rows, spec.dataset, LABELS)
    except data.DataError as error:
        assert str(error).startswith(("dataset.labelField:", "dataset.textField:")), error
        return
    if encoding == "name":
        _check_good_rows_kept(found, len(bad))


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.lists(bad_row, min_size=1, max_size=6))
def test_generated_rows_in_a_file_end_in_a_split_or_a_data_error(bad):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.jsonl"
        lines = [json.dumps({k: _jsonable(v) if not isinstance(v, list | dict) else v for k, v in r.items()})
                 for r in [*GOOD, *bad]]
        path.write_text("\n".join(lines) + "\n")
        spec = _dataset(uri=str(path), maxDroppedFraction=0.1)
        try:
            split = data.load_split(spec)
        except data.DataError as error:
            assert str(error).split(":")[0].startswith(("dataset.", "training.batchSize")), error
            return
        data.write_jsonl(split.train, Path(folder) / "train.jsonl")  # never a UnicodeEncodeError
        texts = {r["text"] for r in split.train + split.eval}
        assert {g["text"] for g in GOOD} <= texts


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff"])
def test_a_lone_surrogate_is_a_dropped_row_with_its_reason(text):
    assert data.row_text(text) == (None, data.NOT_UNICODE)
