"""`kubedistill run` (placeholder registration; the pipeline fills it in)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("run", help="run a DistillationJob on an embedded local Ray")
    parser.add_argument("manifest")
    parser.set_defaults(func=lambda args: 2)
