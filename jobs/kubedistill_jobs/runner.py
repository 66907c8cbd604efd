"""Starting a run: the manifest, the output folder, the log next to the artifact, and Ray."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from kubedistill import chain
from kubedistill.api.distillationjob import DistillationJob
from kubedistill.api.load import ManifestError, load_manifest
from kubedistill.artifacts import OutputLayout
from kubedistill.report import load_report
from kubedistill.uris import UriError, local_path
from kubedistill_jobs.storage import Output, resolve_output

LOGGER = "kubedistill"
LOGGERS = (LOGGER, "kubedistill_jobs")  # the pipeline's own, and its modules' (named by module)


def load_job(path: str | Path, output: str | None = None, teacher_job: str | None = None) -> DistillationJob:
    """The DistillationJob in `path`; `output` (a folder) replaces spec.output.uri; `teacher_job` (the output
    folder or manifest of the job that `teacher.jobRef` names) resolves that reference."""
    job: DistillationJob = load_manifest(path, DistillationJob)
    if output is not None:
        wire = job.to_wire()
        wire["spec"]["output"]["uri"] = str(Path(output).expanduser().resolve())
        job = DistillationJob.model_validate(wire)
    return resolve_teacher_job(job, teacher_job, str(path))


def resolve_teacher_job(job: DistillationJob, teacher_job: str | None, manifest: str = "MANIFEST") -> DistillationJob:
    """The job with `teacher.jobRef` replaced by the referenced job's fp32 student, found in `teacher_job`: its
    output folder, or its manifest (whose spec.output.uri is that folder). The referenced run must have
    finished with its gate passed. ValueError (naming the field or flag) otherwise."""
    ref = job.spec.teacher_job
    if ref is None:
        if teacher_job is not None:
            raise ValueError("--teacher-job: this job's teacher is not a teacher.jobRef; remove --teacher-job")
        return job
    if teacher_job is None:
        raise ValueError(f"teacher.jobRef: names DistillationJob {ref.name}, which a cluster's operator finds; "
                         f"locally give its output folder or manifest: kubedistill run {manifest} --teacher-job "
                         "<folder or manifest>")
    folder = _teacher_output_folder(Path(teacher_job).expanduser())
    layout = OutputLayout(folder)
    if not layout.resolved_spec.is_file():
        raise ValueError(f"--teacher-job: {folder} holds no distillationjob.yaml: not the output folder of a run; "
                         f"run DistillationJob {ref.name} first (kubedistill run <its manifest>)")
    teacher: DistillationJob = load_manifest(layout.resolved_spec, DistillationJob)
    if teacher.metadata.name != ref.name:
        raise ValueError(f"--teacher-job: {folder} is the output of DistillationJob {teacher.metadata.name}, but "
                         f"teacher.jobRef.name is {ref.name}; give that job's folder or fix the reference")
    problem = chain.mismatch(job.spec, ref.name, teacher.spec)
    if problem is not None:
        raise ValueError(problem.replace(chain.FIELD, "teacher.jobRef.name"))
    if not layout.report_json.is_file() or not (layout.student / "config.json").is_file():
        raise ValueError(f"--teacher-job: DistillationJob {ref.name} has not finished in {folder} (no report.json or "
                         "student/): run it to the end first, then this one")
    report = load_report(layout.report_json.read_text())
    if not report.gate.passed:
        raise ValueError(f"--teacher-job: DistillationJob {ref.name} did not pass its gate ({report.gate_failure()}): "
                         "its student teaches nothing; improve it, or lower its gate knowingly")
    return chain.taught_by(job, str(layout.student))


def _teacher_output_folder(path: Path) -> Path:
    if path.is_dir():
        return path.resolve()
    if not path.is_file():
        raise ValueError(f"--teacher-job: {path}: no such folder or manifest")
    try:
        teacher: DistillationJob = load_manifest(path, DistillationJob)
    except ManifestError as error:
        raise ValueError(f"--teacher-job: {path} is neither a run's output folder nor the teacher job's manifest "
                         f"({error}); give the folder its run wrote, or its DistillationJob YAML") from None
    uri = teacher.spec.output.uri
    try:
        return local_path(uri)
    except UriError:
        raise ValueError(f"--teacher-job: {path}: its spec.output.uri {uri} is not a local folder; download that "
                         "output and give the folder") from None


def prepare_output(job: DistillationJob, *, console_log: bool = False) -> Output:
    """The output folder, with the run's log written to `pipeline.log` in it (and to stdout if asked:
    in a pod; a terminal has the progress bars instead)."""
    output = resolve_output(job.spec.output.uri, job.metadata.name)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(OutputLayout(output.local).log)]
    if console_log:
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(formatter)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):  # one run per process: replace an earlier run's handlers
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
    if not console_log:  # in a terminal the modules' warnings still show, as they did before they had a handler
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.WARNING)
        logging.getLogger("kubedistill_jobs").addHandler(terminal)
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
