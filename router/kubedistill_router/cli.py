"""`kubedistill serve` (placeholder registration; the pipeline fills it in)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="serve a job output with a local Triton and the router")
    parser.add_argument("manifest")
    parser.set_defaults(func=lambda args: 2)
