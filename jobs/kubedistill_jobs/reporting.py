"""Reporting back to the DistillationJob: merge-patches of `status.progress`, `status.metrics` and
`status.results` through the status subresource (the only fields the pipeline writes; the operator owns
phase and conditions).

Active only inside a cluster: env KUBEDISTILL_JOB_NAME / KUBEDISTILL_JOB_NAMESPACE set and an in-cluster
service account available. Anywhere else every call is a no-op. A failed patch is logged and never
stops the pipeline: the report next to the artifact is the record, the status a live view of it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from kubedistill.api.base import GROUP, VERSION
from kubedistill.api.distillationjob import JobProgress
from kubedistill.report import Report, job_results
from kubedistill.uris import join_uri

log = logging.getLogger("kubedistill.reporting")
PLURAL = "distillationjobs"


def status_patch(progress: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 results: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merge-patch body: only the given parts of status, camelCase, nulls dropped."""
    status: dict[str, Any] = {}
    if progress is not None:
        status["progress"] = JobProgress.model_validate(progress).to_wire()
    if metrics is not None:
        status["metrics"] = {k: float(v) for k, v in metrics.items()}
    if results is not None:
        status["results"] = results
    return {"status": status}


def results_patch(report: Report, output_uri: str) -> dict[str, Any]:
    results = job_results(report, join_uri(output_uri, "model_repository"), join_uri(output_uri, "report.json"))
    return results.to_wire()


class StatusReporter:
    """Merge-patches the job's status subresource; throttles progress patches."""

    def __init__(self, name: str | None = None, namespace: str | None = None, min_interval: float = 10.0) -> None:
        self.name = name or os.environ.get("KUBEDISTILL_JOB_NAME")
        self.namespace = namespace or os.environ.get("KUBEDISTILL_JOB_NAMESPACE")
        self.min_interval = min_interval
        self._api: Any = None
        self._last_progress = 0.0
        self._last_stage: str | None = None
        self._metrics: dict[str, float] = {}
        if self.name and self.namespace:
            self._api = self._connect()

    @staticmethod
    def _connect() -> Any:
        try:
            from kubernetes import client, config

            config.load_incluster_config()
            return client.CustomObjectsApi()
        except Exception as error:  # not in a pod: nothing to report to
            log.info("status reporting disabled: %s", error)
            return None

    @property
    def active(self) -> bool:
        return self._api is not None

    def patch(self, body: dict[str, Any]) -> None:
        if self._api is None:
            return
        try:
            self._api.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, self.name, body)
        except Exception as error:
            log.warning("could not patch DistillationJob %s/%s status: %s", self.namespace, self.name, error)

    def __call__(self, *, progress: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 results: dict[str, Any] | None = None) -> None:
        if self._api is None:
            return
        if metrics:
            self._metrics.update(metrics)
        now = time.monotonic()
        stage = (progress or {}).get("stage")
        only_progress = progress is not None and metrics is None and results is None
        if only_progress and stage == self._last_stage and now - self._last_progress < self.min_interval:
            return
        self._last_progress, self._last_stage = now, stage or self._last_stage
        self.patch(status_patch(progress, self._metrics if metrics else None, results))
