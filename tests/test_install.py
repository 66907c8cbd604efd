"""Installs that resolve the same today and tomorrow: README's commands, CI and the images install within the
lock files in `constraints/`, and the locks agree with pyproject.toml's ranges. (`.ci/check-locks` resolves
each extra against the registry; these checks need no network.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "constraints"
# Which lock pins which extras of pyproject.toml (constraints/compile).
LOCKED_EXTRAS = {"dev": ("test",), "jobs": ("jobs", "s3"), "operator": ("operator",), "router": ("router-s3",)}


def _pins(lock: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"{lock.name}: not an exact pin: {line}"
            pins[canonicalize_name(name)] = Version(version.split(";")[0].strip())
    return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements an install of `.[extras]` asks for, through nested self-references."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if requirement.name == "kubedistill":
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def _readme_block(heading: str) -> str:
    """The fenced command that follows a line of README.md starting with `heading`."""
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(heading) + r".*?```bash\n(.+?)\n```", text, re.S)
    assert match, f"README.md has no command after {heading!r}"
    return match.group(1).strip()


@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_lock_pins_every_direct_requirement_within_pyprojects_range(lock):
    pins = _pins(LOCKS / f"{lock}.txt")
    for requirement in _requirements(LOCKED_EXTRAS[lock]):
        if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints/{lock}.txt does not pin {name}: run `bash constraints/compile`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints/{lock}.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_every_lock_holds_the_shared_pins(lock):
    pins = _pins(LOCKS / f"{lock}.txt")
    for line in (LOCKS / "pins.in").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name in pins:  # the light images carry neither torch nor ray
                assert requirement.specifier.contains(pins[name]), (lock, line)
    if lock in ("dev", "jobs"):
        assert {"torch", "ray"} <= pins.keys()


def test_readme_commands_install_within_the_locks():
    start = _readme_block("Install, then distil")
    tests = _readme_block("Run the tests")
    for command in (start, tests):
        for part in command.split("&&"):
            if "pip install" in part and "torch==" not in part:
                assert re.search(r"-c constraints/[\w-]+\.txt", part), f"installs outside a lock: {part.strip()}"
    no_deps = _pins(LOCKS / "no-deps.txt")
    assert all(name in tests for name in no_deps), "the --no-deps packages README installs are the locked ones"


def test_ci_runs_readmes_test_command_exactly():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_block("Run the tests") in ci, ".ci/run must run README's test command as README gives it"
