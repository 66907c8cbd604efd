"""Starting a run: the manifest, the output folder, the log next to the artifact, and Ray."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.api.load import load_manifest
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs.storage import Output, resolve_output

LOGGER = "kubedistill"


def load_job(path: str | Path, output: str | None = None) -> DistillationJob:
    """The DistillationJob in `path`; `output` (a folder) replaces spec.output.uri."""
    job: DistillationJob = load_manifest(path, DistillationJob)
    if output is not None:
        wire = job.to_wire()
        wire["spec"]["output"]["uri"] = str(Path(output).expanduser().resolve())
        job = DistillationJob.model_validate(wire)
    return job


def prepare_output(job: DistillationJob, *, console_log: bool = False) -> Output:
    """The output folder, with the run's log written to `pipeline.log` in it (and to stdout if asked:
    in a pod; a terminal has the progress bars instead)."""
    output = resolve_output(job.spec.output.uri, job.metadata.name)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):  # one run per process: replace an earlier run's handlers
        logger.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.FileHandler(OutputLayout(output.local).log)]
    if console_log:
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return output


def start_local_ray(num_cpus: int | None = None) -> None:
    """An embedded Ray on this machine: no cluster, no dashboard, worker output kept out of the terminal; its
    processes end with this one, however it ends (`lifetime`)."""
    import ray

    from kubedistill_jobs.lifetime import watch_this_process

    watch_this_process()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    import ray.data

    for name in ("ray", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data logs to the console at INFO
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    for name in ("ray", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def root_cause(error: BaseException) -> BaseException:
    """The error a user can act on, out of Ray's wrappers (task errors, training failures)."""
    seen: set[int] = set()
    current: Any = error
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None) or current.__cause__
        if hasattr(current, "as_instanceof_cause"):
            try:
                unwrapped = current.as_instanceof_cause()
                inner = getattr(unwrapped, "cause", None) or inner
            except Exception:
                pass
        worker_failures = getattr(current, "worker_failures", None)
        if isinstance(worker_failures, dict) and worker_failures:
            inner = next(iter(worker_failures.values()))
        if inner is None or not isinstance(inner, BaseException):
            break
        current = inner
    return current


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
