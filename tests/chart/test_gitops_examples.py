"""examples/gitops: plain manifests that validate, name fixed objects and install the chart from Git."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubedistill.api import DistillationJob, StudentDeployment, load_manifests

from .conftest import CHART, KUBE_VERSION, NAMESPACE, ROOT

GITOPS = ROOT / "examples" / "gitops"
MODELS = GITOPS / "models"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(GITOPS.rglob("*.yaml")) for d in _documents(p)]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _all_documents() if d["kind"] == kind]


def test_names_are_fixed_so_a_git_diff_is_the_whole_change():
    for path, doc in _all_documents():
        if doc["kind"] == "Kustomization" and doc["apiVersion"].startswith("kustomize.config.k8s.io"):
            continue  # a kustomize file, not an object
        meta = doc["metadata"]
        assert meta.get("name") and "generateName" not in meta, f"{path}: {doc['kind']} needs a fixed name"


def test_kubedistill_resources_validate_against_the_api():
    resources = load_manifests(MODELS / "distillationjob.yaml") + load_manifests(MODELS / "studentdeployment.yaml")
    jobs = [r for r in resources if isinstance(r, DistillationJob)]
    deployments = [r for r in resources if isinstance(r, StudentDeployment)]
    assert len(jobs) == 1 and len(deployments) == 1
    # The pair: the deployment serves the job, in the same namespace.
    assert deployments[0].spec.source.job_ref.name == jobs[0].metadata.name
    assert deployments[0].metadata.namespace == jobs[0].metadata.namespace
    # The job writes to the claim the folder declares.
    claim = next(d for d in _documents(MODELS / "pvc.yaml") if d["kind"] == "PersistentVolumeClaim")
    assert jobs[0].spec.output.uri.startswith(f"pvc://{claim['metadata']['name']}/")


def test_plain_kubernetes_objects_validate():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for _, doc in _all_documents():
        if doc["apiVersion"] in ("v1", "apps/v1"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked += 1
    assert checked >= 3, "the Namespaces and the PVC"


def test_kustomizations_list_existing_files_and_every_manifest():
    for kustomization in GITOPS.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        folder = kustomization.parent
        assert all((folder / name).is_file() for name in listed), kustomization
        assert sorted(listed) == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def test_argocd_applications_install_the_chart_and_the_models():
    apps = {a["metadata"]["name"]: a for a in _by_kind("Application")}
    assert set(apps) == {"kubedistill", "news-topics"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1"
        assert (ROOT / app["spec"]["source"]["path"]).is_dir()
        assert app["spec"]["destination"]["server"] and app["spec"]["destination"]["namespace"]
    assert apps["kubedistill"]["spec"]["source"]["path"] == "charts/kubedistill"
    assert apps["news-topics"]["spec"]["source"]["path"] == "examples/gitops/models"
    # The chart (and its CRDs) syncs before the models.
    wave = {n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for n, a in apps.items()}
    assert wave["kubedistill"] < wave["news-topics"]


def test_flux_installs_the_chart_then_the_models():
    (source,) = _by_kind("GitRepository")
    (release,) = _by_kind("HelmRelease")
    flux = [k for k in _by_kind("Kustomization") if k["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/")]
    kustomizations = {k["metadata"]["name"]: k for k in flux}
    chart_ref = release["spec"]["chart"]["spec"]
    assert (ROOT / chart_ref["chart"]).resolve() == CHART
    assert chart_ref["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"],
                                      "namespace": source["metadata"]["namespace"]}
    for kustomization in kustomizations.values():
        assert (ROOT / kustomization["spec"]["path"]).is_dir()
        assert kustomization["spec"]["sourceRef"]["name"] == source["metadata"]["name"]
    infrastructure = next(k for k in kustomizations.values() if "flux/infrastructure" in k["spec"]["path"])
    models = next(k for k in kustomizations.values() if k["spec"]["path"].endswith("gitops/models"))
    assert infrastructure["spec"]["wait"] is True
    assert models["spec"]["dependsOn"] == [{"name": infrastructure["metadata"]["name"]}]


def test_values_in_the_gitops_examples_pass_the_charts_schema(chart):
    applications = [a for a in _by_kind("Application") if a["spec"]["source"]["path"] == "charts/kubedistill"]
    values = [a["spec"]["source"]["helm"].get("valuesObject", {}) for a in applications]
    values += [r["spec"].get("values", {}) for r in _by_kind("HelmRelease")]
    assert len(values) == 2
    for overrides in values:
        chart.validate_schema(overrides)
        assert chart.render(overrides, name="kubedistill", namespace=NAMESPACE)


def test_kubedistill_resources_pass_the_crds_schemas():
    # What `kubectl apply` checks before the operator sees anything (the CEL rules are the API tests' part).
    import jsonschema

    schemas = {}
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in _documents(path):
            if crd["spec"]["group"] == "kubedistill.io":
                schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = 0
    for _, doc in _all_documents():
        if doc["apiVersion"].startswith("kubedistill.io/"):
            # OpenAPI v3.0 schemas: draft-4 semantics (boolean exclusiveMinimum).
            jsonschema.Draft4Validator(schemas[doc["kind"]]).validate(doc)
            checked += 1
    assert checked == 2
