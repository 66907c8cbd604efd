"""Helpers shared by test folders, loaded by path under a unique name (tests run with --import-mode=importlib)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "kubedistill_processes" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("kubedistill_processes", Path(__file__).with_name("processes.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kubedistill_processes"] = _module
    _spec.loader.exec_module(_module)
