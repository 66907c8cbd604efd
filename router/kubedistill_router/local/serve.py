"""`kubedistill serve`: a real local Triton server and the router, in front of a job's output.

    kubedistill serve OUTPUT_DIR | MODEL_REPOSITORY | studentdeployment.yaml [--port 8080]

Triton runs the python-backend copy of the model repository (see repository.py) on free loopback
ports; the router runs as `python -m kubedistill_router`, exactly as in the StudentDeployment pod.
Both are polled until ready (with a deadline), and both are stopped on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import yaml

from kubedistill.api import ManifestError, StudentDeployment, load_manifest
from kubedistill.artifacts import MODEL_REPOSITORY, SERVING_MANIFEST, OutputLayout, ServingManifest
from kubedistill.errors import InputError
from kubedistill.report import load_report
from kubedistill.routerconfig import ROUTER_CONFIG_FILE, RouterConfig
from kubedistill.uris import UriError, local_path, parse_uri
from kubedistill_router.classification import resolve_threshold
from kubedistill_router.local.repository import build_local_repository
from kubedistill_router.local.triton import TritonNotFound, TritonServer, TritonStartError, start_triton


class ServeError(RuntimeError):
    """Something to tell the user, with the fix."""


class ServeInputError(ServeError, InputError):
    """What to serve, or how, cannot work as given (exit status 2, as `kubedistill run`'s bad input)."""


@dataclass
class ServeTarget:
    repository: Path
    config: RouterConfig
    warning: str = ""  # said before serving: a job whose gate failed


def gate_warning(output: Path) -> str:
    """What to say before serving the output folder of a job whose evaluation gate failed (a StudentDeployment
    would wait for a Succeeded job instead); empty when it passed or the folder holds no report."""
    path = OutputLayout(output).report_json
    if not path.is_file():
        return ""
    report = load_report(path.read_text())
    if report.gate.passed:
        return ""
    return (f"warning: this job did not pass its evaluation gate ({report.gate_failure()}); serving it anyway, "
            "as a StudentDeployment would not (it waits for a Succeeded job)")


def find_repository(folder: Path) -> Path:
    for candidate in (folder / MODEL_REPOSITORY, folder):
        if (candidate / SERVING_MANIFEST).is_file():
            return candidate
    raise ServeInputError(f"{folder} holds no model repository ({MODEL_REPOSITORY}/{SERVING_MANIFEST}): pass the "
                          "output folder of `kubedistill run job.yaml`, its model_repository, or a StudentDeployment "
                          "manifest")


def _job_name(output: Path) -> str | None:
    spec = OutputLayout(output).resolved_spec
    if spec.is_file():
        name = (yaml.safe_load(spec.read_text()) or {}).get("metadata", {}).get("name")
        return str(name) if name else None
    return None


def resolve_target(target: Path, workdir: Path) -> ServeTarget:
    """The repository to serve and the router's configuration, from a folder or a StudentDeployment."""
    if target.is_dir():
        repository = find_repository(target)
        manifest = ServingManifest.read(repository)
        routable = manifest.teacher is not None and manifest.recommended_threshold is not None
        config = RouterConfig(model_name=_job_name(target) or "student", model_repository=str(repository),
                              mode="route" if routable else "student-only",
                              confidence_signal=manifest.confidence_signal)
        return ServeTarget(repository, config, gate_warning(target))
    if not target.is_file():
        raise ServeInputError(f"{target}: no such folder or file")
    try:
        deployment: StudentDeployment = load_manifest(target, StudentDeployment)
    except ManifestError as error:
        raise ServeInputError(str(error)) from None
    source = deployment.spec.source
    if source.model_repository_uri is None:
        raise ServeInputError(f"{target}: source.jobRef needs a cluster to look the job up; locally, serve the "
                              "job's output folder, or set source.modelRepositoryUri")
    uri = source.model_repository_uri
    if parse_uri(uri).scheme == "s3":
        from kubedistill_router.fetch import fetch

        repository = workdir / "fetched"
        fetch(uri, repository)
    else:
        try:
            repository = find_repository(local_path(uri))
        except UriError as error:
            raise ServeInputError(f"{target}: source.modelRepositoryUri: {error}") from None
    config = RouterConfig.from_spec(deployment.metadata.name, deployment.spec)
    return ServeTarget(repository, config.model_copy(update={"model_repository": str(repository)}))


def _check_port(host: str, port: int) -> None:
    """Refuse a port that something listens on. SO_REUSEADDR, as the router's own server sets it: without it,
    the connections of a server stopped a moment ago (TIME_WAIT, about a minute) would block a restart."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ServeInputError(f"port {port} on {host} is in use: pass another with --port") from None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_router(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"the router exited with code {process.returncode}:\n{_tail(log)}")
        if _http_ok(f"{url}/readyz"):
            return
        time.sleep(0.2)
    raise ServeError(f"the router was not ready within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


EXIT_BAD_INPUT = 2  # as `kubedistill run`
EXIT_INTERRUPTED = 130  # Ctrl-C, as `kubedistill run` and a shell report it
EXIT_TERMINATED = 143  # SIGTERM: 128 + its number


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop as on Ctrl-C, and say which it was in the exit status."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def serve(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kubedistill-serve-"))
    triton: TritonServer | None = None
    router: subprocess.Popen[bytes] | None = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _check_port(args.host, args.port)
        target = resolve_target(Path(args.target), workdir)
        if target.warning:
            print(target.warning, file=sys.stderr, flush=True)
        local = build_local_repository(target.repository, workdir / "repository")
        triton = start_triton(local, workdir / "tritonserver.log")
        print(f"starting Triton (logs: {triton.log_path}) …", flush=True)
        triton.wait_ready(args.timeout)

        overrides = {"model_repository": str(local), "triton_url": triton.grpc_url, "triton_protocol": "grpc",
                     "port": args.port}
        for key in ("model_name", "mode", "threshold", "teacher_api_key_file"):
            if getattr(args, key, None) is not None:
                overrides[key] = getattr(args, key)
        config = RouterConfig.model_validate(target.config.model_dump() | overrides)
        config_path = workdir / ROUTER_CONFIG_FILE
        config_path.write_text(config.to_yaml())
        router_log = workdir / "router.log"
        with open(router_log, "wb") as log:
            router = subprocess.Popen([sys.executable, "-m", "kubedistill_router", "--config", str(config_path),
                                       "--host", args.host], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        url = f"http://{args.host}:{args.port}"
        _wait_router(router, url, router_log, args.timeout)
        _announce(url, config, target.repository, triton, workdir)
        while True:  # serve until interrupted, or until either process dies
            if router.poll() is not None:
                raise ServeError(f"the router exited with code {router.returncode}:\n{_tail(router_log)}")
            if triton.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {triton.process.returncode}:\n{triton.log_tail()}")
            time.sleep(0.5)
    except KeyboardInterrupt as interrupt:
        print("stopping the router and Triton …", flush=True)
        return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
    except (ServeInputError, ValueError) as error:  # bad input: a refused config or target
        print(f"kubedistill serve: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ServeError, TritonNotFound, TritonStartError, OSError) as error:
        print(f"kubedistill serve: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(router)
        if triton is not None:
            triton.stop()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _announce(url: str, config: RouterConfig, repository: Path, triton: TritonServer, workdir: Path) -> None:
    manifest = ServingManifest.read(repository)
    example = (manifest.labels or ["an example"])[0]
    body = json.dumps({"instances": [f"A short text about {example}."]})
    try:
        value = resolve_threshold(config, manifest)
    except ValueError:  # serve refused such a config before starting
        value = None
    threshold = "" if value is None else f", threshold {value:g}" + (
        "" if config.threshold is not None else " (the job's recommendation)")
    recorded = [] if config.capture is None else (
        ["escalations"] * (config.capture.escalated and config.mode == "route")
        + ["shadow disagreements"] * (config.capture.shadow_disagreement_rate > 0 and config.mode == "shadow"))
    capture = "" if config.capture is None else f"  capture: {config.capture.uri} ({', '.join(recorded)})\n"
    if manifest.task == "causal-lm":
        print(f"serving {config.model_name!r} (version {manifest.model_version}, mode {config.mode}{threshold}) "
              f"at {url}\n{generation_examples(url, config.model_name)}"
              f"  metrics: {url}/metrics    ready: {url}/readyz\n{capture}"
              f"  triton:  http://{triton.http_url} (grpc {triton.grpc_url}); logs in {workdir}\n"
              "Ctrl-C stops both.", flush=True)
        return
    print(f"serving {config.model_name!r} (version {manifest.model_version}, mode {config.mode}{threshold}) "
          f"at {url}\n"
          f"  try:     curl -s {url}/v1/models/{config.model_name}:predict -H 'Content-Type: application/json' "
          f"-d '{body}'\n"
          f"  metrics: {url}/metrics    ready: {url}/readyz\n{capture}"
          f"  triton:  http://{triton.http_url} (grpc {triton.grpc_url}); logs in {workdir}\n"
          "Ctrl-C stops both.", flush=True)


def generation_examples(url: str, model: str) -> str:
    """How to call a causal-LM model: curl, and the official openai client."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64})
    return (f"  try:     curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
            f"  python:  from openai import OpenAI; client = OpenAI(base_url='{url}/v1', api_key='unused')\n"
            f"           print(client.chat.completions.create(model='{model}', messages=[{{'role': 'user', "
            "'content': 'Hello!'}]).choices[0].message.content)\n")
