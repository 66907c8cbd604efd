"""Loads crdcheck.py (the API server's checks, emulated) under a unique module name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "kubedistill_crdcheck" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("kubedistill_crdcheck", Path(__file__).with_name("crdcheck.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kubedistill_crdcheck"] = _module
    _spec.loader.exec_module(_module)
