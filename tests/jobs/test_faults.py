"""Training under faults, with real processes: `kubedistill run` (embedded Ray, 2 Ray Train workers) as a user
runs it, undisturbed; then with one Ray Train worker process SIGKILLed mid-epoch; then with the whole run (its
process group: the CLI, Ray's own processes, the workers) SIGKILLed mid-epoch and the same command run again.
Both faulted runs finish from their last checkpoint with the undisturbed run's report figures, within TOLERANCE.

And out of disk in the output folder: the run fails with an error that says so and names the folder, keeps
every stage it finished, and resumes from there once there is room."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kubedistill.artifacts import STAGES, OutputLayout

from .conftest import job_manifest, sentiment_rows, write_jsonl

pytestmark = pytest.mark.slow

# Report figures a resumed run must match. Not bit for bit: a resumed worker group starts its dropout RNG
# afresh from the seed rather than where the killed one was, and the steps between the last checkpoint and
# the kill are done again.
TOLERANCE = 0.05
FIGURES = ("retention", "agreement")
STEPS = 74  # 2 epochs of 37 (300 training rows, batches of 8)
KILL_AFTER_STEP = 10  # mid-way through the first epoch, after two checkpoints


def kubedistill(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("kubedistill")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "kubedistill.cli", *args]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("faults")
    data = write_jsonl(sentiment_rows(400, seed=3), root / "sentiment.jsonl")
    manifest = job_manifest(root, tiny_models["bert"], data,
                            training={"epochs": 2, "batchSize": 8, "learningRate": 0.01, "checkpointEverySteps": 5,
                                      "seed": 7},
                            compression={"quantization": "int8"},
                            evaluation={"metrics": ["accuracy", "agreement"], "gate": {"minRetention": None}})
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def start(job: Path, output: Path) -> subprocess.Popen:
    """`kubedistill run`, in a process group of its own (as a pod: one kill takes all of it)."""
    log = open(output.parent / f"{output.name}.console.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(kubedistill("run", str(job), "--output", str(output), "--workers", "2", "--cpus", "2"),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=output.parent)


def finish(process: subprocess.Popen, output: Path, timeout: float = 600) -> None:
    code = process.wait(timeout)
    log = output / "pipeline.log"
    console = output.parent / f"{output.name}.console.log"
    assert code == 0, f"exit {code}\n{console.read_text()[-3000:]}\n{log.read_text()[-3000:] if log.exists() else ''}"


def checkpointed_step(output: Path) -> int:
    steps = []
    for marker in (output / "checkpoints").rglob("step.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):  # one being written
            steps.append(json.loads(marker.read_text())["step"])
    return max(steps, default=0)


def wait_for_step(process: subprocess.Popen, output: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while checkpointed_step(output) < step:
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before step {step}"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within {timeout:g} s"
        time.sleep(0.05)


def train_workers(process: subprocess.Popen) -> list[psutil.Process]:
    """The Ray Train worker processes of a run (actors titled `ray::RayTrainWorker...`)."""
    found = []
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in title:
            found.append(child)
    return found


def report(output: Path) -> dict[str, Any]:
    return json.loads(OutputLayout(output).report_json.read_text())


def figures(output: Path) -> dict[str, float]:
    found = report(output)
    out = {name: float(found[name]) for name in FIGURES}
    out["student_accuracy"] = float(found["student_quantized"]["metrics"]["accuracy"])
    out["teacher_accuracy"] = float(found["teacher"]["metrics"]["accuracy"])
    return out


def same_figures(got: dict[str, float], want: dict[str, float]) -> None:
    assert got["teacher_accuracy"] == want["teacher_accuracy"]  # trained before any fault: identical
    for name, value in want.items():
        assert abs(got[name] - value) <= TOLERANCE, f"{name}: {got[name]:.4f} vs {value:.4f} undisturbed"


@pytest.fixture(scope="module")
def undisturbed(job) -> dict[str, float]:
    output = job.parent / "undisturbed"
    output.mkdir()
    finish(start(job, output), output)
    train = json.loads(OutputLayout(output).train_report.read_text())
    assert train["resumes"] == [] and train["steps"] == STEPS
    return figures(output)


def test_a_killed_train_worker_resumes_from_the_last_checkpoint(job, undisturbed):
    output = job.parent / "worker-killed"
    output.mkdir()
    process = start(job, output)
    try:
        wait_for_step(process, output, KILL_AFTER_STEP)
        workers = train_workers(process)
        assert len(workers) == 2, [" ".join(p.cmdline()) for p in psutil.Process(process.pid).children(True)]
        workers[-1].send_signal(signal.SIGKILL)
        killed_at = checkpointed_step(output)
        finish(process, output)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    train = json.loads(OutputLayout(output).train_report.read_text())
    assert train["steps"] == STEPS and len(train["resumes"]) == 1
    assert KILL_AFTER_STEP <= train["resumes"][0] <= killed_at + 5  # from a checkpoint at or after the kill's
    same_figures(figures(output), undisturbed)


def test_a_killed_run_resumes_when_rerun(job, undisturbed):
    output = job.parent / "run-killed"
    output.mkdir()
    process = start(job, output)
    try:
        wait_for_step(process, output, KILL_AFTER_STEP)
        # The CLI and everything it started, as when its container is killed: Ray puts some of its processes
        # (GCS, raylet, workers) in sessions of their own, so the process group alone would leave them running.
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGKILL)
        process.wait(60)
        alive = psutil.wait_procs(tree, timeout=30)[1]
        assert not alive, [p.pid for p in alive]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    killed_at = checkpointed_step(output)
    layout = OutputLayout(output)
    assert [s for s in STAGES if layout.stage_marker(s).is_file()] == ["data", "teacher", "soft-targets"]
    finish(start(job, output), output)
    train = json.loads(layout.train_report.read_text())
    assert train["steps"] == STEPS and train["resumed_from_step"] == killed_at >= KILL_AFTER_STEP
    same_figures(figures(output), undisturbed)


# Out of disk: the model repository's first file cannot be completed. Only the test's copy of the CLI is
# changed, at that write: the run is otherwise `kubedistill run` as shipped.
DISK_FULL = """
import errno, sys
from pathlib import Path
from kubedistill_jobs import export

def full(repo, **kwargs):
    Path(repo).mkdir(parents=True, exist_ok=True)
    (Path(repo) / "serving.json").write_text('{"task": ')  # cut short, as a full disk leaves it
    raise OSError(errno.ENOSPC, "No space left on device", str(Path(repo) / "serving.json"))

export.write_model_repository = full
from kubedistill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_fails_clearly_keeps_what_was_written_and_resumes(job, undisturbed):
    output = job.parent / "disk-full"
    output.mkdir()
    done = subprocess.run([sys.executable, "-c", DISK_FULL, "run", str(job), "--output", str(output), "--workers",
                           "2", "--cpus", "2"], capture_output=True, text=True, timeout=900, cwd=output.parent)
    assert done.returncode == 1, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no space left on the device of the output folder {output}")
    assert "serving.json" in error and "rerun the same command to resume" in error
    layout = OutputLayout(output)
    kept = [s for s in STAGES if layout.stage_marker(s).is_file()]
    assert kept == ["data", "teacher", "soft-targets", "train", "compress", "evaluate"]  # all but export
    assert layout.report_json.is_file() and (layout.student / "config.json").is_file()
    assert "No space left on device" in (output / "pipeline.log").read_text()

    again = subprocess.run(kubedistill("run", str(job), "--output", str(output), "--workers", "2", "--cpus", "2"),
                           capture_output=True, text=True, timeout=900, cwd=output.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (output / "pipeline.log").read_text()
    assert all(f"stage {s}: done earlier, skipped" in log for s in kept)
    assert json.loads((layout.model_repository / "serving.json").read_text())["task"] == "sequence-classification"
    same_figures(figures(output), undisturbed)


def test_out_of_space_is_found_under_the_errors_that_wrap_it():
    from kubedistill_jobs.cli import out_of_space

    full = OSError(28, "No space left on device", "/out/x")
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("the export failed") from inner
    except RuntimeError as wrapped:
        assert out_of_space(wrapped) is full
    assert out_of_space(OSError(13, "Permission denied"), ValueError("x")) is None
