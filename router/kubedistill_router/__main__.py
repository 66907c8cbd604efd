"""`python -m kubedistill_router --config router.yaml`: the router sidecar."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from kubedistill.routerconfig import ROUTER_CONFIG_DIR, ROUTER_CONFIG_FILE, RouterConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubedistill_router",
                                     description="Confidence router: the student answers, the teacher when unsure.")
    parser.add_argument("--config", default=f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}", help="router.yaml")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=None, help="override the config's port")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from aiohttp import web

    from kubedistill_router.app import build_app

    try:
        config = RouterConfig.read(args.config)
        app = build_app(config)
    except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        print(f"router: {error}", file=sys.stderr)
        return 2
    port = args.port or config.port
    logging.getLogger("kubedistill.router").info("listening on http://%s:%d", args.host, port)
    web.run_app(app, host=args.host, port=port, access_log=None, print=None, loop=new_event_loop())
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (the router extra brings it on Linux and macOS): its
    transports and scheduling cost less CPU per request than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    raise SystemExit(main())
