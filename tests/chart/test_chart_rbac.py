"""The operator's RBAC: explicit, least privilege, the same rules in both install scopes."""

from __future__ import annotations

import pytest

from .conftest import VARIANTS, by_kind
from .rbac import grants

ROLE_KINDS = ("Role", "ClusterRole")


def _rules(objects):
    return [rule for kind in ROLE_KINDS for role in by_kind(objects, kind) for rule in role["rules"]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rules_are_explicit(render, variant):
    for rule in _rules(render(VARIANTS[variant])):
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, "no nonResourceURLs"
        for field in ("apiGroups", "resources", "verbs"):
            assert rule[field], f"{field} must not be empty: {rule}"
            assert not any("*" in item for item in rule[field]), f"wildcard in {field}: {rule}"
        # Powers that would let the operator exceed its own rights.
        assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_status_subresources_are_rules_of_their_own(render, variant):
    for rule in _rules(render(VARIANTS[variant])):
        subresources = [r for r in rule["resources"] if "/" in r]
        assert not subresources or subresources == rule["resources"], f"status mixed with its resource: {rule}"


def test_operator_may_grant_its_pipelines_exactly_their_status(render):
    # Kubernetes lets a subject create a Role only with rights it holds: patch on distillationjobs/status.
    allowed = grants(_rules(render()))
    assert ("kubedistill.io", "distillationjobs/status", "patch") in allowed
    assert {("rbac.authorization.k8s.io", r, "create") for r in ("roles", "rolebindings")} <= allowed
    # ... and nothing beyond that on the job's main resource: no update, create or delete of user objects.
    assert not {("kubedistill.io", "distillationjobs", v) for v in ("create", "update", "delete")} & allowed


def test_secrets_and_claims_are_only_checked_for_existence(render):
    for resource in ("secrets", "persistentvolumeclaims"):
        assert {v for g, r, v in grants(_rules(render())) if r == resource} == {"get"}, resource


def test_single_namespace_roles_hold_the_cluster_roles_namespaced_rules(render):
    cluster = render()
    single = render(VARIANTS["single-namespace"])
    (cluster_role,) = by_kind(cluster, "ClusterRole")
    roles = by_kind(single, "Role")
    (discovery,) = by_kind(single, "ClusterRole")
    for role in roles:
        assert role["rules"] == cluster_role["rules"][: len(role["rules"])]
    # Cluster-scoped reads only: CRDs (kopf's resource discovery) and namespace names.
    assert grants(discovery["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    namespaced = grants(roles[0]["rules"])
    assert namespaced == grants(cluster_role["rules"]) - grants(discovery["rules"])


def test_peering_rules_only_with_peering(render):
    def peering_grants(objects):
        return {(g, r) for g, r, _ in grants(_rules(objects)) if g == "kopf.dev"}

    assert not peering_grants(render())
    assert peering_grants(render(VARIANTS["peering"])) == {("kopf.dev", "clusterkopfpeerings")}
    assert peering_grants(render(VARIANTS["peering-single-namespace"])) == {("kopf.dev", "kopfpeerings")}


def test_bindings_point_at_the_rendered_roles_and_account(render):
    for variant in ("default", "single-namespace", "peering-single-namespace"):
        objects = render(VARIANTS[variant])
        account = by_kind(objects, "ServiceAccount")[0]["metadata"]
        roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for k in ROLE_KINDS
                 for r in by_kind(objects, k)}
        bindings = by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding")
        assert len(bindings) == len(roles)
        for binding in bindings:
            ref = binding["roleRef"]
            namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
            assert (ref["kind"], namespace, ref["name"]) in roles
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
            ]


def test_every_kind_the_operator_creates_may_be_created_and_applied(render):
    manifests = pytest.importorskip("kubedistill_operator.manifests")
    config = pytest.importorskip("kubedistill_operator.config")
    kubeapi = pytest.importorskip("kubedistill_operator.kubeapi")
    from kubedistill.api import load_manifests

    from .conftest import ROOT

    models = ROOT / "examples" / "gitops" / "models"
    resources = load_manifests(models / "distillationjob.yaml") + load_manifests(models / "studentdeployment.yaml")
    allowed = grants(_rules(render()))
    for obj in manifests.render(resources, config.OperatorConfig()):
        resource = kubeapi.resource_of(obj)
        assert (resource.group, resource.plural, "create") in allowed, obj["kind"]
        if obj["kind"] != "RayJob":  # RayJobs are created once per generation, never applied
            assert (resource.group, resource.plural, "patch") in allowed, obj["kind"]
