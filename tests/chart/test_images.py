"""The component images: each Dockerfile is pinned, multi-stage and non-root, and each image's entrypoint
module imports with only that component's extras installed (no container engine runs here, so the
images are checked through the same `pip install '.[extra]'` they run, in a fresh virtualenv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT


@dataclass(frozen=True)
class Image:
    component: str
    extra: str
    # Modules the image runs: its entrypoint and what the entrypoint loads when it starts.
    modules: tuple[str, ...]

    @property
    def dockerfile(self) -> Path:
        return ROOT / self.component / "Dockerfile"

    @property
    def lock(self) -> Path:
        """The image's lock file (constraints/compile): every dependency pinned."""
        return ROOT / "constraints" / f"{self.component}.txt"


OPERATOR = Image("operator", "operator", ("kubedistill_operator.main", "kubedistill.cli"))
# The router image also runs the init container that fetches s3:// model repositories (with s3fs).
ROUTER = Image(
    "router", "router-s3", ("kubedistill_router.__main__", "kubedistill_router.app", "kubedistill_router.fetch", "s3fs")
)
JOBS = Image("jobs", "jobs,s3", ("kubedistill_jobs.entrypoint", "s3fs"))
IMAGES = (OPERATOR, ROUTER, JOBS)
# What the light images must not carry: the training stack.
HEAVY = ("torch", "ray", "transformers", "datasets")


@dataclass(frozen=True)
class Stage:
    base: str
    lines: tuple[str, ...]


def _stages(dockerfile: Path) -> tuple[dict[str, str], list[Stage]]:
    """ARG defaults declared before the first FROM, and each stage's instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    args: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    for line in instructions:
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            stages.append((re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0]), []))
        elif stages:
            stages[-1][1].append(line)
        elif keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
    return args, [Stage(base, tuple(lines)) for base, lines in stages]


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.component)
def test_dockerfile_is_pinned_multistage_and_non_root(image):
    _, stages = _stages(image.dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    for stage in stages:
        name, _, tag = stage.base.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"unpinned base {stage.base}"
    final = stages[-1].lines
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, so that runAsNonRoot can verify it"
    if image is not JOBS:  # rayproject/ray has its `ray` user (uid 1000) already
        # getpass.getuser() (kopf's identity, caches) fails for a uid without a passwd entry.
        assert any("useradd" in line and f"--uid {uid}" in line for line in final), "create the user"
    installs = " ".join(line for stage in stages for line in stage.lines if "pip install" in line)
    assert f"[{image.extra}]" in installs
    others = {i.extra for i in IMAGES} - {image.extra}
    assert not any(f"[{extra}]" in installs for extra in others), "only this component's extra"


def test_light_images_use_a_slim_python_and_the_jobs_image_the_ray_base():
    for image in (OPERATOR, ROUTER):
        assert all(s.base.startswith("python:3.11") and "slim" in s.base for s in _stages(image.dockerfile)[1])
    _, stages = _stages(JOBS.dockerfile)
    from kubedistill.api.distillationjob import RayClusterSpec

    ray_version = RayClusterSpec().ray_version
    for stage in stages:
        # The Ray in the image must be the one a DistillationJob declares by default (spec.ray.rayVersion).
        assert stage.base.startswith(f"rayproject/ray:{ray_version}-py311"), stage.base
    # pip must keep the base image's Ray: the image's lock pins it.
    assert f"ray=={ray_version}\n" in JOBS.lock.read_text()


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.component)
def test_each_image_installs_within_its_lock(image):
    _, stages = _stages(image.dockerfile)
    lines = [line for stage in stages for line in stage.lines]
    copied = {line.split()[-2]: line.split()[-1] for line in lines if line.startswith("COPY") and "--from" not in line}
    lock = image.lock.relative_to(ROOT).as_posix()
    assert lock in copied, f"{image.component}/Dockerfile must copy {lock}"
    for install in (line for line in lines if "pip install" in line):
        for command in install.split("&&"):
            if "pip install" in command:
                assert f"-c {copied[lock]}" in command, f"installs outside the lock: {command.strip()}"


def test_entrypoints_name_the_modules_the_operator_and_chart_run():
    _, operator = _stages(OPERATOR.dockerfile)
    assert 'ENTRYPOINT ["kubedistill"]' in operator[-1].lines
    _, router = _stages(ROUTER.dockerfile)
    assert any(line.startswith("CMD") and '"kubedistill_router"' in line for line in router[-1].lines)
    assert not any(line.startswith("ENTRYPOINT") for line in router[-1].lines), (
        "the operator runs this image with two commands (fetch init container, router)"
    )


def _copied_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile copies from the build context, in every stage."""
    _, stages = _stages(dockerfile)
    sources = []
    for line in (line for stage in stages for line in stage.lines):
        if line.startswith("COPY") and "--from" not in line:
            sources.extend(p for p in line.split()[1:-1] if not p.startswith("--"))
    return sources


def test_dockerignore_lets_every_copied_source_through():
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    for image in IMAGES:
        for source in _copied_sources(image.dockerfile):
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), (image.component, source)


# --- the extras, installed as the images install them -------------------------------------------------------

def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=900)


def _build_wheel(work: Path) -> Path:
    """The project's wheel, built from exactly what the Dockerfiles copy into the build stage."""
    source = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "Dockerfile")
    for name in _copied_sources(OPERATOR.dockerfile):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    # With build isolation, as `docker build` does: the build backend pyproject.toml asks for, not this one's.
    wheels = work / "wheels"
    result = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(wheels)], work)
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("kubedistill-*.whl")
    return wheel


def _make_venv(work: Path, wheel: Path, image: Image) -> Path:
    """A fresh environment with the image's extra, installed within the image's lock as its Dockerfile does."""
    extra = image.extra
    venv = work / f"venv-{image.component}"
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one: no pip bootstrap, and pip's cache is shared.
    result = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
                   "-c", str(image.lock), f"kubedistill[{extra}] @ {wheel.as_uri()}"], work)
    assert result.returncode == 0, f"pip install '.[{extra}]' failed:\n{result.stderr[-4000:]}"
    return python


@pytest.fixture(scope="session")
def image_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """The project's wheel, as the images install it, and a work folder for the environments."""
    work = tmp_path_factory.mktemp("images")
    return work, _build_wheel(work)


@pytest.fixture(scope="session")
def component_pythons(image_wheel) -> dict[str, Path]:
    """One fresh virtualenv per light image (operator, router), built once per session. One after the other:
    two pip installs at once were slower on two cores (unpacking is CPU-bound), 81 s against 46 s."""
    work, wheel = image_wheel
    return {image.extra: _make_venv(work, wheel, image) for image in (OPERATOR, ROUTER)}


def _imports(python: Path, modules: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    return _run([str(python), "-c", code, *modules], cwd)


def _installed(python: Path, modules: tuple[str, ...], cwd: Path) -> list[str]:
    code = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    result = _run([str(python), "-c", code, *modules], cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow
@pytest.mark.parametrize("image", (OPERATOR, ROUTER), ids=lambda i: i.component)
def test_light_image_entrypoint_imports_with_only_its_extra(component_pythons, image, tmp_path):
    python = component_pythons[image.extra]
    # Run outside the repository, so that nothing is imported from the source tree.
    result = _imports(python, image.modules, tmp_path)
    assert result.returncode == 0, f"{image.modules} in a '.[{image.extra}]' environment:\n{result.stderr}"
    assert not _installed(python, HEAVY, tmp_path), "the light images carry no training stack"
    result = _run([str(python), "-c", "import torch"], tmp_path)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


@pytest.mark.slow
def test_operator_image_command_line_starts_with_only_its_extra(component_pythons, tmp_path):
    # The image's ENTRYPOINT is `kubedistill`, which registers every component's subcommand.
    kubedistill = component_pythons[OPERATOR.extra].parent / "kubedistill"
    result = _run([str(kubedistill), "operator", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--peering" in result.stdout and "--liveness-port" in result.stdout


@pytest.mark.slow
def test_jobs_image_entrypoint_imports_with_only_its_extra(image_wheel, tmp_path):
    # The jobs image is `.[jobs,s3]` on rayproject/ray: a fresh environment with just those extras (torch resolves
    # to the CPU build pip finds first, as in the image's own install).
    work, wheel = image_wheel
    python = _make_venv(work, wheel, JOBS)
    result = _imports(python, JOBS.modules, tmp_path)
    assert result.returncode == 0, f"{JOBS.modules} in a '.[jobs]' environment:\n{result.stderr}"
    assert not _installed(python, ("kopf", "tritonclient"), tmp_path), "no control-plane packages"
    result = _run([str(python.parent / "kubedistill"), "run", "--help"], tmp_path)
    assert result.returncode == 0 and "--output" in result.stdout, result.stderr


# --- the Triton image -------------------------------------------------------------------------------------------

def _lock(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in path.read_text().splitlines() if "==" in line and not line.startswith("#"))


def test_triton_image_adds_onnxruntime_genai_within_its_lock():
    """The python backend of the cluster's Triton runs the causal-LM generation model (ONNX Runtime GenAI)."""
    from kubedistill_operator.config import DEFAULT_TRITON_IMAGE, OperatorConfig

    # Not a folder named `triton`: on sys.path (the repository root is, under pytest) it would shadow OpenAI's
    # triton package, which torch imports.
    dockerfile = ROOT / "triton-image" / "Dockerfile"
    assert not (ROOT / "triton").exists()
    _, stages = _stages(dockerfile)
    assert len(stages) >= 2
    for stage in stages:
        name, _, tag = stage.base.rpartition(":")
        assert name == "nvcr.io/nvidia/tritonserver" and re.fullmatch(r"\d{2}\.\d{2}-py3", tag), stage.base
    # The lock is compiled for the base image's Python: 3.12 from Triton 24.12 on (Ubuntu 24.04).
    assert stages[-1].base >= "nvcr.io/nvidia/tritonserver:24.12"
    assert "--python-version 3.12" in (ROOT / "constraints" / "compile").read_text()
    users = [line.split()[1] for line in stages[-1].lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    lines = [line for stage in stages for line in stage.lines]
    copied = {line.split()[-1] for line in lines if line.startswith("COPY") and "constraints/triton.txt" in line}
    installs = [c for line in lines if "pip " in line for c in line.split("&&") if "pip install" in c or
                "pip download" in c]
    assert installs and all(any(f"-c {lock}" in c for lock in copied) for c in installs), installs
    pins = _lock(ROOT / "constraints" / "triton.txt")
    assert "onnxruntime-genai" in pins and "onnxruntime" in pins
    assert int(pins["numpy"].split(".")[0]) < 2  # Triton's python-backend stub (see ARCHITECTURE facts)
    # What the generation model imports is what the image installs.
    model = (ROOT / "jobs" / "kubedistill_jobs" / "triton_models" / "generate.py").read_text()
    assert "import onnxruntime_genai" in model and "import numpy" in model
    assert OperatorConfig().triton_image == OperatorConfig.from_env({}).triton_image == DEFAULT_TRITON_IMAGE
