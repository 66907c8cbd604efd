"""`kubedistill`: the command line. Each component registers its own subcommand, and heavy imports
(torch, kopf, tritonclient) happen only inside the command that needs them."""

from __future__ import annotations

import argparse
import importlib
import sys

from kubedistill import __version__

# subcommand → module with `register(subparsers)`; the module itself must import nothing heavy.
COMMANDS = {
    "run": "kubedistill_jobs.cli",
    "serve": "kubedistill_router.cli",
    "manifests": "kubedistill_operator.cli",
    "operator": "kubedistill_operator.cli",
    "crds": "kubedistill.api.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubedistill",
        description="Knowledge distillation as a declarative workflow: train a student on a teacher's "
        "soft targets, compress and evaluate it, and serve it behind a confidence router.",
        epilog="`kubedistill COMMAND --help` gives a command's flags and their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"kubedistill {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
