"""Start a real Triton server on loopback from the `tritonserver` binary inside the nvidia-pytriton wheel.

That build is CPU-only with the python backend alone. Its backend stub runs in the interpreter first on
PATH and needs numpy < 2 there, so a small virtual environment (numpy < 2, onnxruntime) is built once
under ~/.cache/kubedistill and put first on the server's PATH. The backend itself is copied into a
private backend directory next to it, with the stub for this Python version.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubedistill.uris import UriError, package_root

INSTALL_HINT = "install it with `pip install --no-deps nvidia-pytriton` (only its bundled tritonserver is used)"
STUB_REQUIREMENTS = ("numpy<2", "onnxruntime>=1.17")
# Generation models (causal LM) run ONNX Runtime GenAI in the stub: a second environment, so that the
# classification one is never rebuilt under a running server.
GENAI_STUB_REQUIREMENTS = (*STUB_REQUIREMENTS, "onnxruntime-genai>=0.18")
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonNotFound(RuntimeError):
    """No usable tritonserver binary on this machine."""


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready in time."""


def cache_root() -> Path:
    return Path(os.environ.get("KUBEDISTILL_CACHE", Path.home() / ".cache" / "kubedistill"))


@dataclass(frozen=True)
class TritonDistribution:
    """The pieces of the wheel a server needs."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path
    version: str

    @classmethod
    def find(cls) -> TritonDistribution:
        try:
            root = package_root("pytriton") / "tritonserver"
        except UriError:
            raise TritonNotFound(f"no tritonserver found: the nvidia-pytriton package is missing; {INSTALL_HINT}") \
                from None
        dist = cls(
            binary=root / "bin" / "tritonserver",
            libs=root.parent.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub",
            version=_dist_version(root.parent.parent),
        )
        for path in (dist.binary, dist.libs, dist.python_backend / "libtriton_python.so", dist.stub):
            if not path.exists():
                raise TritonNotFound(f"the nvidia-pytriton install is incomplete ({path} is missing, Python "
                                     f"{PY_VERSION}); reinstall: "
                                     "`pip install --force-reinstall --no-deps nvidia-pytriton`")
        return dist


def _dist_version(site_packages: Path) -> str:
    found = sorted(site_packages.glob("nvidia_pytriton-*.dist-info"))
    return found[-1].name.removeprefix("nvidia_pytriton-").removesuffix(".dist-info") if found else "unknown"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builders of one cache entry across processes (parallel tests, two `serve`s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stub_environment(root: Path | None = None, *, genai: bool = False) -> Path:
    """The virtual environment the python backend stub runs in (numpy < 2, onnxruntime; with `genai`,
    onnxruntime-genai too); built once."""
    requirements = GENAI_STUB_REQUIREMENTS if genai else STUB_REQUIREMENTS
    env = (root or cache_root()) / f"triton-stub-env{'-genai' if genai else ''}-py{PY_VERSION}"
    marker = env / ".kubedistill-ready"
    wanted = "\n".join(requirements)
    with _locked(env.with_suffix(".lock")):
        if marker.exists() and marker.read_text() == wanted:
            return env
        shutil.rmtree(env, ignore_errors=True)
        print(f"building the Triton python-backend environment in {env} (once): {', '.join(requirements)}",
              file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(env)])
        _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *requirements])
        marker.write_text(wanted)
    return env


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TritonStartError(f"`{' '.join(cmd)}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def backend_directory(dist: TritonDistribution, root: Path | None = None) -> Path:
    """A private backend directory: the wheel's python backend plus the stub for this Python."""
    backends = (root or cache_root()) / f"triton-backends-{dist.version}-py{PY_VERSION}"
    python = backends / "python"
    marker = backends / ".kubedistill-ready"
    with _locked(backends.with_suffix(".lock")):
        if not marker.exists():
            shutil.rmtree(backends, ignore_errors=True)
            python.mkdir(parents=True)
            for item in dist.python_backend.iterdir():
                if item.is_file():
                    shutil.copy2(item, python / item.name)
            shutil.copy2(dist.stub, python / dist.stub.name)
            marker.write_text(dist.version)
    return backends


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def needs_genai(model_repository: Path) -> bool:
    """Whether a repository holds generation models (ONNX Runtime GenAI in `<model>/<version>/genai/`)."""
    return any(Path(model_repository).glob("*/*/genai/genai_config.json"))


@dataclass
class TritonServer:
    """A tritonserver child process on loopback ports."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonStartError(f"tritonserver was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:  # the whole group: the python-backend stubs would live on, orphaned
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_triton(model_repository: Path, log_path: Path, *, http_port: int | None = None,
                 grpc_port: int | None = None, dist: TritonDistribution | None = None) -> TritonServer:
    """Launch tritonserver on loopback (not yet ready: call `wait_ready`)."""
    dist = dist or TritonDistribution.find()
    env_dir = stub_environment(genai=needs_genai(model_repository))
    backends = backend_directory(dist)
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(dist.libs), env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    cmd = [
        str(dist.binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--disable-auto-complete-config",
        "--log-verbose=0",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return TritonServer(process, http_port, grpc_port, log_path)
