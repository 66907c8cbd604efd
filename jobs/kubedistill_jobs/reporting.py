"""Reporting back to the DistillationJob: merge-patches of `status.progress`, `status.metrics`,
`status.results` and `status.failure` through the status subresource (the only fields the pipeline writes;
the operator owns phase and conditions, and reads `failure` to stop the retries of an input error).

Active only inside a cluster: `PipelineEnv` (KUBEDISTILL_JOB_NAME / _NAMESPACE) set and an in-cluster
service account available. Anywhere else every call is a no-op. A failed patch is logged and never
stops the pipeline: the report next to the artifact is the record, the status a live view of it.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubedistill.api.base import GROUP, VERSION
from kubedistill.api.distillationjob import JobFailure, JobProgress
from kubedistill.env import PipelineEnv
from kubedistill.errors import InputError
from kubedistill.report import Report, job_results

log = logging.getLogger("kubedistill.reporting")
PLURAL = "distillationjobs"
MAX_MESSAGE = 4000


# Exceptions (by class name, anywhere in an error's chain) of a network or a hub that may answer next time.
TRANSIENT_NAMES = frozenset({"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
                             "URLError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ProtocolError",
                             "MaxRetryError", "NewConnectionError", "NameResolutionError", "ConnectError",
                             "RemoteProtocolError", "gaierror"})


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from or during (`raise ... from None` keeps `__context__`)."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < 16:
        item = pending.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        pending += [item.__cause__, item.__context__]
    return seen


def is_transient(error: BaseException) -> bool:
    """A network failure, a timeout, or a server's 429/5xx anywhere in the error's chain: the same input may
    succeed on a retry (a hub or an endpoint that was down), whatever error wrapped it."""
    for item in _chain(error):  # outermost first: an error that says whether it is permanent decides
        explicit = getattr(item, "permanent", None)
        if isinstance(explicit, bool):
            return not explicit
        status = item.code if isinstance(item, urllib.error.HTTPError) else getattr(
            getattr(item, "response", None), "status_code", None)
        if isinstance(status, int):  # a server answered: only "too many requests" and its own errors pass
            if status == 429 or status >= 500:
                return True
            continue
        if any(cls.__name__ in TRANSIENT_NAMES for cls in type(item).__mro__):
            return True
    return False


def is_permanent(*errors: BaseException) -> bool:
    """Whether any of `errors` (the raised one, its root cause) is an `InputError` (an endpoint that answered
    and refused is one) and none was caused by a network that may answer next time."""
    if any(is_transient(error) for error in errors):
        return False
    return any(isinstance(error, InputError) for error in errors)


def failure_patch(error: BaseException, stage: str | None, *, permanent: bool, run: str | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """`status.failure` for `error`: what failed, where, and whether a retry can help."""
    message = str(error).strip() or type(error).__name__
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    failure = JobFailure(stage=stage, error=type(error).__name__, message=message, permanent=permanent,
                         ray_job_name=run or PipelineEnv.from_env().run_id,
                         time=(now or datetime.now(UTC)).replace(microsecond=0))
    return failure.to_wire()


def progress_patch(progress: dict[str, Any]) -> dict[str, Any]:
    """`status.progress` as a whole, camelCase: every key of `JobProgress`, null where `progress` has none, so
    that the merge-patch removes what an earlier stage set (the training step, an ETA)."""
    model = JobProgress.model_validate(progress)
    cleared = {field.alias or name: None for name, field in JobProgress.model_fields.items()}
    return cleared | model.to_wire()


def status_patch(progress: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 results: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merge-patch body: only the given parts of status, camelCase; `progress` replaces the whole of it."""
    status: dict[str, Any] = {}
    if progress is not None:
        status["progress"] = progress_patch(progress)
    if metrics is not None:
        status["metrics"] = {k: float(v) for k, v in metrics.items()}
    if results is not None:
        status["results"] = results
    return {"status": status}


def results_patch(report: Report, output_uri: str) -> dict[str, Any]:
    """`status.results` on the wire (built by `kubedistill.report.job_results`)."""
    return job_results(report, output_uri).to_wire()


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class InClusterApi:
    """The pod's service account against its API server: one verb, merge-patch of a custom object's status.

    The token is read at each call (the kubelet rotates it on disk). Standard library only: the pipeline's one
    API call does not need a client library."""

    def __init__(self, server: str, account: Path = SERVICE_ACCOUNT, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.account = account
        self.timeout = timeout
        ca = account / "ca.crt"
        tls = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
        # Straight to the API server, never through $HTTPS_PROXY (set in job pods for hub and s3 downloads;
        # urllib's $NO_PROXY knows no CIDR ranges).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=tls))

    @classmethod
    def from_pod(cls, account: Path = SERVICE_ACCOUNT) -> InClusterApi | None:
        """The API server the pod's environment names, or None outside a pod."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (account / "token").exists():
            return None
        return cls(f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}", account)

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str,
                                              name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Raises `urllib.error.HTTPError` (with the server's status) or `URLError`."""
        token = (self.account / "token").read_text().strip()
        path = "/".join(quote(part) for part in ("apis", group, version, "namespaces", namespace, plural, name))
        request = urllib.request.Request(
            f"{self.server}/{path}/status", data=json.dumps(body).encode(), method="PATCH",
            headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json",
                     "Authorization": f"Bearer {token}"})
        with self._opener.open(request, timeout=self.timeout) as response:
            return dict(json.loads(response.read() or b"{}"))


class StatusReporter:
    """Merge-patches the job's status subresource; throttles progress patches.

    A throttled progress is kept, not lost: the run's end writes the final progress in the same patch as the
    results (`finished`: 100 %, nothing remaining) or the failure (`failure`: where it stopped, no ETA)."""

    def __init__(self, name: str | None = None, namespace: str | None = None, min_interval: float = 10.0) -> None:
        env = PipelineEnv.from_env()
        self.name = name or env.job_name
        self.namespace = namespace or env.job_namespace
        self.min_interval = min_interval
        self._api: Any = None
        self._last_progress = 0.0
        self._last_stage: str | None = None
        self._progress: dict[str, Any] | None = None  # the last progress given, sent or throttled
        self._metrics: dict[str, float] = {}
        if self.name and self.namespace:
            self._api = self._connect()

    @staticmethod
    def _connect() -> Any:
        api = InClusterApi.from_pod()
        if api is None:
            log.info("status reporting disabled: not in a pod with a service account")
        return api

    @property
    def active(self) -> bool:
        return self._api is not None

    @property
    def stage(self) -> str | None:
        """The last stage the pipeline reported progress of."""
        return self._last_stage

    def failure(self, failure: dict[str, Any] | None) -> None:
        """Report a failure (`failure_patch`) with the progress where the run stopped, or clear an earlier
        attempt's (None)."""
        status: dict[str, Any] = {"failure": failure}
        if failure is not None and self._progress is not None:
            status["progress"] = progress_patch({**self._progress, "estimated_remaining_seconds": None})
        self.patch({"status": status})

    def finished(self, results: dict[str, Any] | None = None) -> None:
        """The run is done: progress complete (its last stage, 100 %, no step or ETA) and the results, in one
        patch, whatever the throttling dropped before."""
        done = {"stage": self._last_stage, "percent": 100.0}
        self.patch({"status": {"progress": progress_patch(done), **({"results": results} if results else {})}})

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
        if progress is not None:
            self._progress = dict(progress)
        stage = (progress or {}).get("stage")
        only_progress = progress is not None and metrics is None and results is None
        if only_progress and stage == self._last_stage and now - self._last_progress < self.min_interval:
            return
        self._last_progress, self._last_stage = now, stage or self._last_stage
        self.patch(status_patch(progress, self._metrics if metrics else None, results))
