"""`kubedistill manifests FILE...` and `kubedistill operator`. Imports happen inside the commands (kopf is heavy)."""

from __future__ import annotations

import argparse
import os
import sys

ENV_METRICS_PORT = "KUBEDISTILL_METRICS_PORT"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    manifests = subparsers.add_parser(
        "manifests", help="print the objects the operator would create for these resources (YAML stream)",
        description="Print, as one YAML stream, the objects the operator would create for the DistillationJobs and "
        "StudentDeployments in FILEs (ConfigMaps, RayJob, Deployment, Service, ...), from the operator's own "
        "builders, for review and diffs; nothing is sent to a cluster. Documents of other kinds are skipped "
        "(counted on stderr).")
    manifests.add_argument("files", nargs="+", metavar="FILE",
                           help="a manifest file, `-` for stdin, or a folder (its .yaml, .yml and .json files, "
                           "as `kubectl apply -f` reads them)")
    manifests.add_argument("-R", "--recursive", action="store_true",
                           help="read folders' subfolders too (default: only the folder's own files)")
    manifests.set_defaults(func=_manifests)

    operator = subparsers.add_parser(
        "operator", help="run the operator (kopf) against the current cluster",
        description="Run the kubedistill operator: it watches DistillationJobs and StudentDeployments and creates "
        "their RayJobs, Deployments, Services and ConfigMaps. In a pod it uses the pod's service account; "
        "elsewhere --kubeconfig or $KUBECONFIG.")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="serve only this namespace (repeatable; default: every namespace, as -A)")
    operator.add_argument("--peering", metavar="NAME", default=None,
                          help="kopf peering object shared by the replicas (needs kopf's peering CRDs; default: "
                          "kopf's `default` peering when those CRDs are installed, else none)")
    operator.add_argument("--standalone", action="store_true",
                          help="no peering: this replica is the only one (default: off)")
    operator.add_argument("--priority", type=int, default=None, metavar="N",
                          help="peering priority; the highest serves, the others wait (default with --peering: random, "
                          "so that replicas sharing one set of arguments never tie, which would freeze them all)")
    operator.add_argument("--liveness-port", type=int, default=8080, metavar="PORT",
                          help="port of the liveness endpoint http://0.0.0.0:PORT/healthz (0 disables it; "
                          "default: 8080)")
    operator.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                          help=f"port of the Prometheus endpoint http://0.0.0.0:PORT/metrics (0 disables it; "
                          f"default: ${ENV_METRICS_PORT} or 8081)")
    operator.add_argument("--kubeconfig", default=None, metavar="FILE",
                          help="kubeconfig file (default: in-cluster, else $KUBECONFIG, else ~/.kube/config)")
    operator.add_argument("--resync-seconds", type=float, default=600.0, metavar="SECONDS",
                          help="seconds between full re-lists of the watched resources (a level-based resync; "
                          "default: 600)")
    operator.add_argument("--live-status-seconds", type=float, default=30.0, metavar="SECONDS",
                          help="seconds between two reads of a StudentDeployment's router metrics into status.live "
                          "(the window its figures cover; default: 30)")
    operator.set_defaults(func=_operator)


def options_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kubedistill_operator.config import OperatorConfig
    from kubedistill_operator.main import OperatorOptions

    if args.peering and args.standalone:
        raise SystemExit("kubedistill operator: --peering and --standalone exclude each other")
    return OperatorOptions(
        namespaces=tuple(args.namespace),
        peering=args.peering,
        standalone=args.standalone,
        priority=args.priority,
        liveness_port=args.liveness_port or None,
        metrics_port=_metrics_port(args.metrics_port) or None,
        kubeconfig=args.kubeconfig,
        resync_seconds=args.resync_seconds,
        live_status_seconds=args.live_status_seconds,
        config=OperatorConfig.from_env(),
    )


def _metrics_port(flag: int | None) -> int:
    if flag is not None:
        return flag
    value = os.environ.get(ENV_METRICS_PORT) or "8081"
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"kubedistill operator: ${ENV_METRICS_PORT}={value!r} is not a port number") from None


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from kubedistill_operator.main import main

    try:
        return main(options_from_args(args))
    except kopf.LoginError as error:
        print(f"kubedistill operator: {error}", file=sys.stderr)
        return 2


def _manifests(args: argparse.Namespace) -> int:
    from kubedistill.api import ManifestError
    from kubedistill.api.load import Manifests, parse_manifests, read_manifests
    from kubedistill_operator.config import OperatorConfig
    from kubedistill_operator.manifests import dump_objects, missing_jobs, render

    found = Manifests()
    try:
        for path in args.files:
            found.extend(parse_manifests(sys.stdin.read(), "<stdin>") if path == "-"
                         else read_manifests(path, args.recursive))
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2
    if found.skipped:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(found.skipped.items()))
        print(f"skipped {found.skipped.total()} document(s) of other kinds: {kinds}", file=sys.stderr)
    if not found.resources:
        print(f"no DistillationJob or StudentDeployment in {' '.join(args.files)}", file=sys.stderr)
        return 2
    for note in missing_jobs(found.resources):
        print(f"note: {note}", file=sys.stderr)
    try:  # what only the resources together show (a chain of jobs)
        objects = render(found.resources, OperatorConfig.from_env())
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2
    sys.stdout.write(dump_objects(objects))
    return 0
