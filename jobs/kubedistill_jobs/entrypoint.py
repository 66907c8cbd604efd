"""The RayJob entrypoint: `python -m kubedistill_jobs.entrypoint /etc/kubedistill/distillationjob.yaml`.

Connects to the Ray cluster KubeRay started, runs the pipeline with log-line progress, and reports
progress, metrics and results into the DistillationJob's status. A job whose gate is not met still
exits 0: the RayJob succeeded, and the operator reads results.gatePassed=false (reason GateNotMet).
Any other failure is reported to status.failure and exits 1. An input error (spec, model, data: a
`kubedistill.errors.InputError`) is permanent: the operator fails the job and stops the RayJob's retries.
Anything else is transient: the RayJob's retry resumes from the last stage and checkpoint.
"""

from __future__ import annotations

import logging
import sys

from kubedistill_jobs import runner


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kubedistill_jobs.entrypoint DISTILLATIONJOB_YAML", file=sys.stderr)
        return 2
    log = logging.getLogger(runner.LOGGER)
    log.addHandler(logging.StreamHandler(sys.stdout))  # until the output folder (and its log) is known
    log.setLevel(logging.INFO)
    import ray

    from kubedistill_jobs.display import LogDisplay
    from kubedistill_jobs.pipeline import Pipeline
    from kubedistill_jobs.reporting import StatusReporter, failure_patch, is_permanent, results_patch

    reporter = StatusReporter()
    stage = "load"
    try:
        job = runner.load_job(argv[0])
        output = runner.prepare_output(job, console_log=True)
        stage = "prepare"
        ray.init()
        result = Pipeline(job, output, display=LogDisplay(log), on_status=reporter).run()
    except BaseException as error:
        cause = runner.root_cause(error)
        permanent = is_permanent(error, cause)
        log.exception("pipeline failed%s: %s", " (an input error: retrying cannot help)" if permanent else "",
                      runner.one_line(cause))
        reporter.failure(failure_patch(cause, reporter.stage or stage, permanent=permanent))
        return 1
    reporter.finished(results_patch(result.report, job.spec.output.uri) if result.report is not None else None)
    if result.report is not None and not result.report.gate.passed:
        log.warning("gate not met: %s", result.report.gate_failure())
    try:
        output.push()
    except Exception as error:
        log.exception("could not write the output to %s", job.spec.output.uri)
        reporter.failure(failure_patch(error, "export", permanent=False))
        return 1
    reporter.failure(None)  # an earlier attempt's transient failure no longer applies
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
