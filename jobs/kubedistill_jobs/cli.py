"""`kubedistill run MANIFEST [--output DIR] [--teacher-job FOLDER] [--workers N]`: a DistillationJob on an
embedded local Ray.

Exit codes: 0 done, 2 bad input (one line naming the field), 3 the evaluation gate was not met
(artifacts kept), 1 any other failure, 130 interrupted (rerun the same command to resume).
Nothing heavy is imported at module level: `kubedistill --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_GATE, EXIT_INTERRUPTED = 2, 1, 3, 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "run",
        help="run a DistillationJob on an embedded local Ray",
        description="Run a DistillationJob manifest end to end on this machine (embedded Ray, no cluster). "
        "Rerunning with the same output resumes: finished stages are skipped and training continues "
        "from its last checkpoint. Exit status: 0 done, 2 bad input, 3 the evaluation gate was not met "
        "(artifacts kept), 1 any other failure (see pipeline.log in the output folder), 130 interrupted.",
    )
    parser.add_argument("manifest", help="DistillationJob YAML (the same file `kubectl apply` takes)")
    parser.add_argument("--output", metavar="DIR", help="output folder (default: the manifest's spec.output.uri)")
    parser.add_argument("--teacher-job", metavar="FOLDER_OR_MANIFEST",
                        help="for a spec.teacher.jobRef: the output folder (or the manifest) of the job it names, "
                        "whose fp32 student teaches (default: none; needed only with teacher.jobRef)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Ray Train workers (default: spec.ray.workers.replicas, at most the CPU count)")
    parser.add_argument("--cpus", type=int, metavar="N", help="CPUs the embedded Ray may use (default: all)")
    parser.set_defaults(func=run_command)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_command(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # library progress bars would tear through ours

    from kubedistill.api.load import ManifestError
    from kubedistill.errors import InputError
    from kubedistill_jobs import runner

    try:
        job = runner.load_job(args.manifest, args.output, args.teacher_job)
        output = runner.prepare_output(job)
    except (ManifestError, ValueError) as error:
        return _fail("; ".join(str(error).splitlines()), EXIT_BAD_INPUT)
    cpus = args.cpus or os.cpu_count() or 1
    workers = args.workers or min(job.spec.ray.workers.replicas, cpus)
    if workers < 1:
        return _fail("--workers: at least 1", EXIT_BAD_INPUT)

    import ray

    from kubedistill_jobs.display import RichDisplay
    from kubedistill_jobs.pipeline import Pipeline

    display = RichDisplay()
    pipeline = Pipeline(job, output, workers=workers, display=display)
    try:
        with display:  # bad input is found before Ray starts: preflight checks and the data stage need none
            pipeline.run(stop_after="data")
            runner.start_local_ray(cpus)
            result = pipeline.run()
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume from {output.local}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as error:
        cause = runner.root_cause(error)
        if isinstance(cause, InputError):
            return _fail(runner.one_line(cause), EXIT_BAD_INPUT)
        import logging

        logging.getLogger(runner.LOGGER).exception("run failed")
        full = out_of_space(error, cause)
        if full is not None:
            return _fail(f"no space left on the device of the output folder {output.local} (writing "
                         f"{full.filename or 'a file'}): every finished stage and checkpoint is kept; free space (or "
                         "raise the volume's size) and rerun the same command to resume", EXIT_FAILED)
        return _fail(f"{type(cause).__name__}: {runner.one_line(cause)} (log: {output.local / 'pipeline.log'})",
                     EXIT_FAILED)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    print_summary(display.console, result, output.local)
    report = result.report
    if report is not None and not report.gate.passed:
        print(f"gate not met: {report.gate_failure()} (artifacts kept in {output.local})", file=sys.stderr)
        return EXIT_GATE
    return 0


def out_of_space(*errors: BaseException) -> OSError | None:
    """The disk-full (or quota) OSError among `errors` and what they were raised from, if any."""
    import errno

    pending, seen = list(errors), set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        pending += [error.__cause__, error.__context__]
    return None


def _num(value: float | None, digits: int = 4) -> str:
    """A number for people; `unknown` where the report has none (an endpoint teacher has no graph)."""
    return "unknown" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    """A ratio for people: `2.50x`, or `unknown` (no batch-1 latency measured, no teacher graph)."""
    return "unknown" if value is None else f"{value:.2f}x"


def print_summary(console: Any, result: Any, folder: Any) -> None:
    from rich.table import Table

    from kubedistill_jobs import stages

    table = Table(title="kubedistill run", title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    for stage, marker in result.stages.items():
        table.add_row(stage, f"{marker.get('seconds', 0):.1f}", stages.summary(stage, marker))
    console.print(table)
    report = result.report
    if report is not None:
        metric = report.primary_metric
        console.print(
            f"teacher {metric} {_num(report.teacher.metrics.get(metric))} · quantized student "
            f"{_num(report.student_quantized.metrics.get(metric))} · retention {_num(report.retention)} · "
            # a generation job times tokens/s (below) unless latency is listed: no "speedup unknown" beside it
            + (f"speedup {_times(report.speedup)} · " if report.speedup is not None or report.generation is None
               else "")
            + f"compression {_times(report.compression)}"
            + (f" · generation {_times(report.generation.speedup)} the teacher's tokens/s"
               if report.generation is not None else "")
        )
        econ = report.economics
        if econ is not None:
            console.print(f"cost ratio {_times(econ.cost_ratio.value)} · monthly saving "
                          f"{_num(econ.monthly_saving.value, 2)} {econ.currency} · payback "
                          f"{_num(econ.payback_days.value, 3)} days (report.md, Economics)")
    console.print(f"output: {folder}")
