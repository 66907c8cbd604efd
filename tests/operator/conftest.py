"""Fixtures of the operator tests: the kmock + kopf harness (harness.py), loaded by path under a unique name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load(module: str, file: str):  # type: ignore[no-untyped-def]
    """A helper module of this folder, once per process (the chart tests load the harness the same way)."""
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, Path(__file__).with_name(file))
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    spec.loader.exec_module(loaded)
    return loaded


harness = _load("kubedistill_harness", "harness.py")
validation = _load("kubedistill_validation", "validation.py")


@pytest.fixture
def cluster(tmp_path):
    """The emulated API server with the operator running against it."""
    with harness.OperatorHarness(tmp_path) as running:
        running.start_operator()
        yield running
