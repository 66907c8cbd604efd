"""The router's own bearer token (`router.auth.apiKeySecretRef`): an aiohttp middleware.

The token comes from the environment (`KUBEDISTILL_ROUTER_API_KEY`, set from the Secret in the pod), never from
the config file. Every route but health, readiness and metrics (probes and Prometheus scrape without a token)
needs `Authorization: Bearer <token>`, compared in constant time; otherwise 401 with `WWW-Authenticate`.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from kubedistill.routerconfig import ROUTER_API_KEY_ENV, RouterConfig

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kubedistill-router"'}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_key(config: RouterConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token clients must send, or None when the config needs none.

    Raises ValueError when the config requires a token and the environment holds none (a router that would
    answer every request with 401, or worse, none)."""
    if not config.require_api_key:
        return None
    key = (environ.get(ROUTER_API_KEY_ENV) or "").strip()
    if not key:
        raise ValueError(f"router.auth.apiKeySecretRef: the router needs its token in ${ROUTER_API_KEY_ENV}, which "
                         "is empty; check the Secret and its key (locally: export the variable)")
    return key


def bearer_middleware(key: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = key.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # compare_digest on bytes of any length: the time does not depend on how much of the token matches.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            return web.json_response({"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                      "with the key in router.auth.apiKeySecretRef"}, status=401, headers=CHALLENGE)
        return await handler(request)

    return middleware


def auth_middlewares(config: RouterConfig) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The middlewares `config` asks for: the bearer check, or none."""
    key = api_key(config)
    return [] if key is None else [bearer_middleware(key)]
