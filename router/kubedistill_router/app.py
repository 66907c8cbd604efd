"""The router's HTTP application: health, readiness, metrics, and the endpoints of the served task.

Handlers are keyed by the export's task, so another task (causal-LM behind an OpenAI-compatible API)
slots in as one more handler with its own routes; limits, errors and metrics stay here, shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubedistill.artifacts import SERVING_MANIFEST, ServingManifest
from kubedistill.routerconfig import RouterConfig
from kubedistill_router.auth import auth_middlewares
from kubedistill_router.capture import CaptureSink
from kubedistill_router.classification import ClassificationHandler
from kubedistill_router.errors import RouterError, TooManyRequests
from kubedistill_router.generation import GenerationHandler
from kubedistill_router.metrics import RouterMetrics
from kubedistill_router.protocol import MAX_BODY_BYTES, SERVED_BY
from kubedistill_router.triton import TritonModels

log = logging.getLogger("kubedistill.router")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TaskHandler(Protocol):
    def routes(self) -> list[web.RouteDef]: ...

    def describe(self) -> str: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


HANDLERS: dict[str, Callable[..., TaskHandler]] = {"sequence-classification": ClassificationHandler,
                                                   "causal-lm": GenerationHandler}


def load_manifest(repository: Path) -> ServingManifest:
    path = repository / SERVING_MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: model_repository ({repository}) must be a model repository "
                                "exported by a DistillationJob")
    return ServingManifest.read(repository)


def build_app(config: RouterConfig) -> web.Application:
    """The app for `config`; bad configuration fails here, before any request."""
    repository = Path(config.model_repository)
    manifest = load_manifest(repository)
    if manifest.task not in HANDLERS:
        raise ValueError(f"serving.json: task {manifest.task} is not served by this router; "
                         f"supported: {', '.join(HANDLERS)}")
    metrics = RouterMetrics()
    triton = TritonModels(config.triton_url, config.triton_protocol, config.timeout_seconds)
    capture = CaptureSink(config.capture, metrics) if config.capture is not None else None
    handler = HANDLERS[manifest.task](config, manifest, repository, triton, metrics, capture)

    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[*auth_middlewares(config), limit_middleware(config.max_concurrency, metrics),
                                       errors_middleware])
    app[MAX_BODY_BYTES] = config.max_body_bytes

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if await handler.ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": f"the student model is not ready in Triton at "
                                  f"{config.triton_url}"}, status=503)

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(app: web.Application) -> None:
        await handler.close()
        await triton.close()
        if capture is not None:  # after the handler: its last shadow comparisons may still capture
            await asyncio.to_thread(capture.close)

    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view),
                    *handler.routes()])
    app.on_cleanup.append(close)
    log.info("router: %s; Triton at %s (%s)%s", handler.describe(), config.triton_url, config.triton_protocol,
             f"; {capture.description}" if capture is not None else "")
    return app


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """RouterErrors become JSON answers with their status; nothing else escapes as an HTML 500."""
    try:
        return await handler(request)
    except RouterError as error:
        return web.json_response({"error": error.message}, status=error.status, headers=error.headers)
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        return web.json_response({"error": f"{request.method} is not allowed on {request.path}; use {allowed}"},
                                 status=405, headers={"Allow": allowed})
    except web.HTTPException as error:
        if error.status >= 400:
            return web.json_response({"error": error.reason}, status=error.status)
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal router error; see the router's log"}, status=500)


def limit_middleware(max_concurrency: int, metrics: RouterMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Bounded concurrency for POSTs (429 with Retry-After when full), with request metrics."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        if metrics.in_flight_now >= max_concurrency:
            metrics.rejected.inc()
            metrics.count_request(429, "none")
            error = TooManyRequests(f"the router is at its limit of {max_concurrency} requests in flight; retry")
            return web.json_response({"error": error.message}, status=429, headers=error.headers)
        metrics.in_flight_now += 1
        start = time.perf_counter()
        try:
            response = await handler(request)  # errors_middleware, inside this one, answers every error
        finally:
            metrics.in_flight_now -= 1
        metrics.request_seconds.observe(time.perf_counter() - start)
        metrics.count_request(response.status, request.get(SERVED_BY, "none"))
        return response

    return middleware
