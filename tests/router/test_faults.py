"""Serving under faults, briefly: benchmarks/faults.py's scenarios (a slow teacher, a teacher refusing
connections, Triton killed and restarted) for a few seconds each, against the real router and tritonserver at
concurrency 32. The benchmark runs them for a minute each; the checks are the same."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import psutil
import pytest

from .conftest import TEXTS

pytestmark = pytest.mark.slow

SECONDS = 9.0  # per scenario: three phases of 3 s


def faults_benchmark(monkeypatch: pytest.MonkeyPatch):
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("kubedistill_faults_benchmark", benchmarks / "faults.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


async def test_faults_leave_every_answerable_request_answered_in_time(model_repository, tmp_path, monkeypatch):
    faults = faults_benchmark(monkeypatch)
    results = await faults.run_scenarios(model_repository, tmp_path, SECONDS, concurrency=32, texts=TEXTS)
    print(faults.table(results))
    by_name = {r["scenario"]: r for r in results["scenarios"]}
    assert set(by_name) == set(faults.SCENARIOS)
    for result in results["scenarios"]:
        assert result["requests"] > 32, result
        assert all(result["checks"].values()), result
    # The faults did happen: answers from both models, degraded ones while the teacher failed, 503s while the
    # student was gone, and the router's readiness followed Triton.
    for name in ("teacher-slow", "teacher-refusing"):
        assert by_name[name]["served_by_teacher"] > 0 and by_name[name]["degraded_during_fault"] > 0
    # Nothing of the run is left: the killed Triton's python-backend stubs went with it.
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(
        p.info["cmdline"] or [])]
    assert left == []
    restart = by_name["triton-restart"]
    assert restart["503_student_down"] > 0 and restart["not_ready_seconds"] > 0
    assert restart["ready_after_triton_s"] <= faults.READY_WITHIN
