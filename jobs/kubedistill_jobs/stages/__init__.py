"""The pipeline's stages: one module each, named so that they sort in the order they run.

Each module exposes what the runner (`kubedistill_jobs.pipeline`) needs:

    NAME      its name in `kubedistill.artifacts.STAGES` (its marker is `stages/<NAME>.json`)
    WEIGHT    its rough share of a run's time, for the overall percentage
    UNIT      what its progress counts ("rows", "steps"; "step" for a few coarse steps)
    READS     the parts of the output it reads (`OutputLayout` attributes), written by earlier stages
    WRITES    the parts it writes besides its marker
    run(context, progress) -> dict   the work; returns the fields of its marker
    summary(marker) -> str           one line for people, from its marker

Stages share state only through `kubedistill_jobs.context.Context`, never by importing each other, and
import heavy modules inside `run` (`kubedistill run` shows its first stage before torch is loaded).

Adding a stage: a module here, numbered for its place (`s35_generate.py` between s30 and s40), and its
name in `STAGES`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, cast

from kubedistill.artifacts import STAGES, Stage
from kubedistill_jobs.context import Context, Progress

_MODULE_NAME = re.compile(r"s\d\d_\w+")


class StageModule(Protocol):
    NAME: Stage
    WEIGHT: int
    UNIT: str
    READS: tuple[str, ...]
    WRITES: tuple[str, ...]
    run: Callable[[Context, Progress], dict[str, Any]]
    summary: Callable[[dict[str, Any]], str]


def _discover() -> dict[str, StageModule]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if _MODULE_NAME.fullmatch(m.name))
    modules: list[ModuleType] = [importlib.import_module(f"{__name__}.{name}") for name in names]
    found = tuple(getattr(module, "NAME", None) for module in modules)
    if found != STAGES:
        raise RuntimeError(f"the stage modules {names} name the stages {found}, but kubedistill.artifacts.STAGES "
                           f"is {STAGES}: they must agree, in order")
    return {module.NAME: cast(StageModule, module) for module in modules}


MODULES: dict[str, StageModule] = _discover()


def summary(name: str, marker: dict[str, Any]) -> str:
    """One line for people about a finished stage, from its marker."""
    return MODULES[name].summary(marker)


def unit(name: str) -> str:
    """What the stage's progress counts ("" for a name that is no stage)."""
    return MODULES[name].UNIT if name in MODULES else ""
