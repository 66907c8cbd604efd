"""The chart's CRDs are the repository's generated CRDs, byte for byte, plus kopf's peering CRDs."""

from __future__ import annotations

import pytest
import yaml

from .conftest import CHART, ROOT

# kopf's own CRDs (group kopf.dev), shipped for `peering.enabled`: not generated from kubedistill's models.
KOPF_PEERING = "kopf-peering.yaml"


def test_chart_crds_are_the_generated_crds_byte_for_byte():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty: run `python -m kubedistill.api.crdgen`"
    assert shipped == sorted([*generated, KOPF_PEERING])
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kubedistill/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/kubedistill/crds/"
        )


def test_helm_loads_every_crd(chart):
    kinds = {doc["spec"]["names"]["kind"] for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc}
    assert {"DistillationJob", "StudentDeployment", "KopfPeering", "ClusterKopfPeering"} <= kinds


def test_kopf_peering_crds_are_valid_and_match_what_kopf_watches():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    references = pytest.importorskip("kopf._cogs.structs.references")
    crds = list(yaml.safe_load_all((CHART / "crds" / KOPF_PEERING).read_text()))
    for crd in crds:
        kubernetes_validate.validate(crd, "1.30", strict=True)
    served = {(c["spec"]["group"], c["spec"]["versions"][0]["name"], c["spec"]["names"]["plural"]) for c in crds}
    for selector in (references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K):
        assert (selector.group, selector.version, selector.any_name) in served
