"""`kubedistill crds`: print the CustomResourceDefinitions (for `kubectl apply -f -`)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crds", help="print the CustomResourceDefinitions as YAML",
        description="Print the DistillationJob and StudentDeployment CustomResourceDefinitions as one YAML stream, "
        "generated from the API models: `kubedistill crds | kubectl apply -f -` installs them without Helm.")
    parser.set_defaults(func=_crds)


def _crds(args: argparse.Namespace) -> int:
    from kubedistill.api.crdgen import build_crds, render

    sys.stdout.write("---\n".join(render(crd) for crd in build_crds().values()))
    return 0
