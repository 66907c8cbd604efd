"""Helper modules the test folders share, loaded by path under unique names (tests run with
--import-mode=importlib, so folders are not packages of one another): import them by these names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HELPERS = {  # in load order: a helper may import those above it
    "kubedistill_patches": "patches.py",  # JSON merge-patch, to replay status writes
    "kubedistill_processes": "processes.py",  # driving `kubedistill serve` and the router as processes
    "kubedistill_crdcheck": "api/crdcheck.py",  # the API server's checks of a manifest, emulated
    "kubedistill_validation": "operator/validation.py",  # created objects against the Kubernetes schemas
    "kubedistill_harness": "operator/harness.py",  # kmock's API emulator with the real operator against it
}

for _name, _file in HELPERS.items():
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).parent / _file)
        assert _spec is not None and _spec.loader is not None
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_name] = _module
        _spec.loader.exec_module(_module)
