"""`kubedistill serve`: registration only (the work happens in kubedistill_router.local.serve, imported
when the command runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a job's output with a local Triton server and the router",
        description="Start a real Triton server (the tritonserver of the nvidia-pytriton wheel) with the model "
        "repository and the confidence router in front of it; Ctrl-C stops both.",
    )
    parser.add_argument("target", metavar="OUTPUT_DIR_OR_MANIFEST",
                        help="output folder of `kubedistill run`, a model repository, or a StudentDeployment manifest")
    parser.add_argument("--port", type=int, default=8080, help="router port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="router address (default 127.0.0.1)")
    parser.add_argument("--model-name", default=None, help="name in /v1/models/<name> (default: the job's name)")
    parser.add_argument("--mode", choices=["route", "student-only", "teacher-only", "shadow"], default=None)
    parser.add_argument("--threshold", type=float, default=None, help="escalation threshold (default: recommended)")
    parser.add_argument("--teacher-api-key-file", default=None, help="file with a remote teacher's API key")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Triton and the router")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the generated repository and logs")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from kubedistill_router.local.serve import serve

    return serve(args)
