"""`kubedistill manifests` and `kubedistill operator` (placeholder registration)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name in ("manifests", "operator"):
        parser = subparsers.add_parser(name)
        parser.set_defaults(func=lambda args: 2)
