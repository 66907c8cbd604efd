"""`to_wire`: what the operator's ConfigMap and `kubedistill run --output` write must read back the same."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubedistill.api.distillationjob import DistillationJob

ROOT = Path(__file__).resolve().parents[2]


def _quickstart() -> dict:
    return yaml.safe_load((ROOT / "examples" / "quickstart" / "distillationjob.yaml").read_text())


def test_a_null_that_overrides_a_default_survives_and_other_nulls_are_dropped():
    doc = _quickstart()
    doc["spec"]["evaluation"]["gate"]["minRetention"] = None  # the gate off: the default is 0.95
    wire = DistillationJob.model_validate(doc).to_wire()
    assert wire["spec"]["evaluation"]["gate"] == {"minRetention": None}
    assert "maxSamples" not in wire["spec"]["evaluation"]  # null by default: nothing to say
    assert DistillationJob.model_validate(wire) == DistillationJob.model_validate(doc)


def test_metadata_beyond_the_models_fields_is_kept():
    doc = _quickstart()
    doc["metadata"] |= {"labels": {"team": "ml"}, "annotations": {"a": "b"}, "resourceVersion": "7"}
    wire = DistillationJob.model_validate(doc).to_wire()
    assert wire["metadata"]["labels"] == {"team": "ml"} and wire["metadata"]["annotations"] == {"a": "b"}
    assert wire["metadata"]["resourceVersion"] == "7"


def test_numeric_labels_are_refused_once_with_the_quoted_fix():
    import pydantic
    import pytest

    from kubedistill.api.distillationjob import TaskSpec

    with pytest.raises(pydantic.ValidationError) as refused:
        TaskSpec.model_validate({"type": "sequence-classification", "labels": [1, 2, 3, 4, 5]})
    assert refused.value.error_count() == 1
    assert '["1", "2", "3", "4", "5"]' in str(refused.value)
    assert TaskSpec.model_validate({"type": "sequence-classification", "labels": ["1", "2"]}).labels == ["1", "2"]
