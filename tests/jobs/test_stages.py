"""The stage modules: one per name in STAGES, in order, each reading only what an earlier stage wrote; one
summary per stage for the display and the CLI; one base for every input error."""

from __future__ import annotations

import pytest
from kubedistill_jobs import stages
from kubedistill_jobs.pipeline import RunResult, percent

from kubedistill.artifacts import STAGES, OutputLayout


def test_the_stage_modules_are_the_stages_in_order():
    assert tuple(stages.MODULES) == STAGES
    for name, module in stages.MODULES.items():
        assert name == module.NAME and module.WEIGHT > 0 and module.UNIT
        assert callable(module.run) and callable(module.summary)


def test_a_module_list_that_disagrees_with_stages_is_refused(monkeypatch):
    monkeypatch.setattr(stages, "STAGES", ("data", "teacher"))
    with pytest.raises(RuntimeError, match="must agree, in order"):
        stages._discover()


def test_each_stage_reads_only_what_an_earlier_stage_wrote():
    written: set[str] = set()
    for name, module in stages.MODULES.items():
        for part in (*module.READS, *module.WRITES):
            assert isinstance(getattr(OutputLayout, part, None), property), f"{name}: {part} is no output part"
        assert set(module.READS) <= written, f"{name} reads {set(module.READS) - written} before it is written"
        written |= set(module.WRITES)


def test_overall_percent_follows_the_stage_weights():
    assert percent("data", 0.0) == 0.0 and percent("export", 1.0) == 100.0
    points = [percent(stage, fraction) for stage in STAGES for fraction in (0.0, 0.5, 1.0)]
    assert points == sorted(points)
    total = sum(m.WEIGHT for m in stages.MODULES.values())
    assert percent("train", 0.0) == round(100 * sum(stages.MODULES[s].WEIGHT for s in STAGES[:3]) / total, 1)


def test_the_cli_table_shows_each_stage_modules_summary():
    from kubedistill_jobs.cli import print_summary
    from rich.console import Console

    markers = {
        "data": {"train": 120, "eval": 40, "duplicates": 3, "seconds": 0.5},
        "teacher": {"method": "head", "params": 2_500_000, "accuracy": 0.875, "seconds": 3.0},
        "train": {"steps": 12, "student_params": 1_230_000, "history": [{"eval_accuracy": 0.8125}], "seconds": 9.0},
    }
    console = Console(record=True, width=200)
    print_summary(console, RunResult(stages=markers), "/out")
    shown = console.export_text()
    for name, marker in markers.items():
        assert stages.summary(name, marker) in shown
    assert "120 train / 40 eval rows (3 repeated texts dropped)" in shown
    assert "2.5M params, adaptation head, eval accuracy 0.8750" in shown
    assert "12 steps, 1.23M params, eval_accuracy 0.8125" in shown


def test_every_input_error_is_an_input_error():
    from kubedistill_jobs.data import DataError
    from kubedistill_jobs.endpoint_teacher import EndpointError, EndpointRefused
    from kubedistill_jobs.models import ModelError
    from kubedistill_jobs.pipeline import SpecChangedError
    from kubedistill_jobs.preflight import PreflightError

    from kubedistill.api.load import ManifestError
    from kubedistill.errors import InputError
    from kubedistill.uris import UriError

    for error in (DataError, ModelError, PreflightError, SpecChangedError, EndpointRefused, ManifestError, UriError):
        assert issubclass(error, InputError), error
    assert not issubclass(EndpointError, InputError)  # unreachable, or 429/5xx after retries: a retry may help


def test_a_changed_spec_is_refused_naming_the_fields_that_differ():
    from kubedistill_jobs.pipeline import _differences

    old = {"task": {"maxLength": 128, "labels": ["a", "b"]}, "dataset": {"uri": "/d"}}
    new = {"task": {"maxLength": 256, "labels": ["a", "b"]}, "dataset": {"uri": "/d", "maxDroppedFraction": 0.05}}
    assert _differences(old, new) == ["spec.dataset.maxDroppedFraction", "spec.task.maxLength"]
    assert _differences(old, old) == []
