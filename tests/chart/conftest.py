"""Render the chart with the real Helm engine (helm-python-sdk: Helm v4's Go SDK as a C library)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubedistill"
RELEASE = "kubedistill"
NAMESPACE = "kubedistill-system"
KUBE_VERSION = "1.30"  # validated against the oldest Kubernetes the docs promise beyond 1.27's EOL

# The variants the chart documents; each renders, lints and validates.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "single-namespace": {"watchNamespaces": ["news-topics", "support-intents"]},
    "peering": {"replicaCount": 2, "peering": {"enabled": True}},
    "peering-single-namespace": {
        "replicaCount": 3,
        "peering": {"enabled": True},
        "watchNamespaces": ["news-topics"],
    },
    "servicemonitor": {
        "serviceMonitor": {
            "routers": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        }
    },
    "servicemonitor-single-namespace": {
        "watchNamespaces": ["news-topics"],
        "serviceMonitor": {"routers": {"enabled": True}},
    },
    "servicemonitor-operator": {
        "serviceMonitor": {
            "operator": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "routers": {"enabled": True},
        }
    },
    "no-metrics": {"metrics": {"enabled": False}},
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "kubedistill-operator"}},
    "images": {
        "image": {"digest": "sha256:" + "a" * 64},
        "jobImage": {"repository": "registry.example.com/ml/kubedistill-jobs", "tag": "0.1.0-cu128"},
        "tritonImage": "nvcr.io/nvidia/tritonserver:24.10-py3",
        "imagePullSecrets": [{"name": "ghcr"}],
        "workloadImagePullSecrets": ["ghcr", "ngc"],
    },
}


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def documents(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of a render, NOTES.txt left out."""
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., list[dict[str, Any]]]:
    def _render(values: dict[str, Any] | None = None, name: str = RELEASE) -> list[dict[str, Any]]:
        return documents(chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True))

    return _render


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
