"""Fixtures of the operator tests: the kmock + kopf harness (harness.py, loaded by tests/conftest.py)."""

from __future__ import annotations

import kubedistill_harness as harness
import pytest


@pytest.fixture
def cluster(tmp_path):
    """The emulated API server with the operator running against it."""
    with harness.OperatorHarness(tmp_path) as running:
        running.start_operator()
        yield running
