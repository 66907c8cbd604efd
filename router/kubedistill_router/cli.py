"""`kubedistill serve`: registration only (the work happens in kubedistill_router.local.serve, imported
when the command runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a job's output with a local Triton server and the router",
        description="Start a real Triton server (the tritonserver of the nvidia-pytriton wheel) with the model "
        "repository and the confidence router in front of it; Ctrl-C stops both (exit status 130; SIGTERM: 143).",
    )
    parser.add_argument("target", metavar="OUTPUT_DIR_OR_MANIFEST",
                        help="output folder of `kubedistill run`, a model repository, or a StudentDeployment manifest")
    parser.add_argument("--port", type=int, default=8080, metavar="PORT", help="router port (default: 8080)")
    parser.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                        help="router address (default: 127.0.0.1); Triton always takes free loopback ports")
    parser.add_argument("--model-name", default=None, metavar="NAME",
                        help="the name in /v1/models/<NAME> (default: the job's name, else `student`; for a "
                        "StudentDeployment its modelName or name)")
    parser.add_argument("--mode", choices=["route", "student-only", "teacher-only", "shadow"], default=None,
                        help="route: the student answers, the teacher takes what is below the threshold; "
                        "student-only; teacher-only; shadow: the student answers and a sample also goes to the "
                        "teacher (default: route when the repository has a teacher and a recommended threshold, "
                        "else student-only; for a StudentDeployment its router.mode)")
    parser.add_argument("--threshold", type=float, default=None, metavar="0-1",
                        help="escalate requests whose confidence is below this (an instance's class probability, a "
                        "generated answer's token-level signal; default: a StudentDeployment's "
                        "router.threshold, else the recommended threshold in serving.json)")
    parser.add_argument("--teacher-api-key-file", default=None, metavar="FILE",
                        help="file holding the API key of a remote teacher named in a StudentDeployment "
                        "(default: none)")
    parser.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                        help="seconds to wait for Triton and the router to be ready (default: 180)")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the generated repository and the Triton and router logs (default: removed on exit)")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from kubedistill_router.local.serve import serve

    return serve(args)
