"""The RayJob entrypoint: `python -m kubedistill_jobs.entrypoint /etc/kubedistill/distillationjob.yaml`.

Connects to the Ray cluster KubeRay started, runs the pipeline with log-line progress, and reports
progress, metrics and results into the DistillationJob's status. A job whose gate is not met still
exits 0: the RayJob succeeded, and the operator reads results.gatePassed=false (reason GateNotMet).
Any other failure exits 1, and the RayJob's retry resumes from the last stage and checkpoint.
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
    from kubedistill_jobs.reporting import StatusReporter, results_patch

    reporter = StatusReporter()
    try:
        job = runner.load_job(argv[0])
        output = runner.prepare_output(job, console_log=True)
        ray.init()
        result = Pipeline(job, output, display=LogDisplay(log), on_status=reporter).run()
    except BaseException as error:
        cause = runner.root_cause(error)
        log.exception("pipeline failed: %s", runner.one_line(cause))
        return 1
    if result.report is not None:
        reporter(results=results_patch(result.report, job.spec.output.uri))
        if not result.report.gate.passed:
            log.warning("gate not met: retention %.4f is %.4f below %s", result.report.retention,
                        result.report.shortfall(), result.report.gate.min_retention)
    output.push()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
