"""Running the operator: kopf settings (kubedistill.io annotations, peering, liveness), its metrics, and kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubedistill.api import GROUP
from kubedistill_operator import naming
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.handlers import JOBS, STUDENTS, build_registry, post_event
from kubedistill_operator.kubeapi import KubeApi
from kubedistill_operator.metrics import JOB_KIND, STUDENT_KIND, OperatorMetrics
from kubedistill_operator.reconcile.context import Context

FINALIZER = f"{GROUP}/finalizer"


@dataclass(frozen=True)
class OperatorOptions:
    """`kubedistill operator`'s flags; an empty `namespaces` serves the whole cluster."""

    namespaces: tuple[str, ...] = ()
    peering: str | None = None
    standalone: bool = False
    priority: int | None = None
    liveness_host: str = "0.0.0.0"
    liveness_port: int | None = 8080
    # Prometheus /metrics; None serves none (the CLI's default port is 8081).
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None
    kubeconfig: str | None = None
    resync_seconds: float = 600.0
    # Seconds between two reads of a StudentDeployment's routers (status.live): the window its figures cover.
    live_status_seconds: float = 30.0
    wait_delay: float = 30.0
    config: OperatorConfig = field(default_factory=OperatorConfig.from_env)

    @property
    def liveness_endpoint(self) -> str | None:
        if self.liveness_port is None:
            return None
        return f"http://{self.liveness_host}:{self.liveness_port}/healthz"


def build_settings(options: OperatorOptions) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's own annotations and finalizer live in the project's API group, not kopf.zalando.org.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key=naming.LAST_HANDLED_ANNOTATION_KEY)
    settings.peering.clusterwide = not options.namespaces
    # kopf freezes every operator that sees a peer of equal priority; replicas of one Deployment share their
    # arguments, so each draws its own priority: the highest serves, the rest stand by until it goes away.
    settings.peering.priority = options.priority if options.priority is not None else (
        secrets.randbelow(2**31 - 2) + 1 if options.peering else 0)
    # Events come from the reconcilers with their own reasons; kopf's log lines become events only on warnings.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    # After its own patch kopf waits this long for the patched version to come back on the watch before it takes
    # older events (the handlers' status writes) as the object's state. In a burst of a thousand jobs on a busy
    # machine that took over kopf's default 5 s for 49 of them, and kopf ran their create handlers a second time;
    # on two cores shared with other work the operator and the API server stalled for up to 40 s, past a 30 s
    # window (every job whose annotations patch fell in the stall was created twice). The wait ends at the next
    # event of the object, so a long window costs nothing while events flow: only the rare patch whose version
    # never comes back (a re-list after a newer write) delays that object's next change handlers this long.
    settings.persistence.consistency_timeout = 120.0
    # Watches end and re-list this often: every object is seen again (a level-based resync).
    settings.watching.server_timeout = options.resync_seconds
    settings.watching.client_timeout = options.resync_seconds + 60
    return settings


async def run_operator(options: OperatorOptions, api: KubeApi | None = None,
                       stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run until `stop_flag` is set (or a signal arrives, in the main thread)."""
    api = api or KubeApi.from_environment(options.kubeconfig)
    registry = build_registry(api, options.live_status_seconds)
    metrics: OperatorMetrics | None = None
    serving: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if options.metrics_port is not None:
        metrics = OperatorMetrics()
        metrics.register_observers(registry, {JOB_KIND: JOBS, STUDENT_KIND: STUDENTS})
        serving = metrics.serving(options.metrics_host, options.metrics_port)
    event = post_event if metrics is None else metrics.counting_events(post_event)
    settings = build_settings(options)
    ctx = Context(api=api, config=options.config, event=event, wait_delay=options.wait_delay,
                  executor=settings.execution.executor)
    with serving:
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not options.namespaces,
            namespaces=list(options.namespaces),
            standalone=options.standalone,
            peering_name=options.peering,
            liveness_endpoint=options.liveness_endpoint,
            memo=kopf.Memo(ctx=ctx, metrics=metrics),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )


def main(options: OperatorOptions) -> int:
    # kopf's formatter: each line about an object starts with `[namespace/name]` (plain logging drops it).
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True)
    asyncio.run(run_operator(options))
    return 0
