"""The chart's RBAC against what the real operator does: every API request the operator makes, through a
DistillationJob's and a StudentDeployment's whole life on kmock's API emulator (tests/operator/harness.py),
and of an operator running with kopf peering, is allowed by the rendered rules, and every rule is needed:
either a recorded request uses it, or it is listed in NOT_EXERCISED (or NAMESPACED_ONLY) with the reason
the emulated runs cannot show it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import ROOT, VARIANTS, by_kind, one
from .rbac import Request, allows, grants

pytest.importorskip("kmock")
pytest.importorskip("kopf")

NAMESPACE = "news-topics"
JOB = "news-topics-v1"
SD = "news-topics"

# (group, resource, verb) the chart grants that the emulated run cannot exercise, and why they are needed.
NOT_EXERCISED: dict[tuple[str, str, str], str] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"):
        "kopf lists CRDs to notice its resources being installed or removed; the emulator serves no CRD API",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"):
        "kopf watches CRDs after the initial listing (see list)",
}
PEERING_IN_NAMESPACES = "peering in the watched namespaces: the namespaced twin of clusterkopfpeerings (exercised)"
# Granted in the single-namespace variant only (the emulated operator runs cluster-wide, see harness.py).
NAMESPACED_ONLY: dict[tuple[str, str, str], str] = {
    ("", "namespaces", "list"): "kopf limited to namespaces lists them (else it falls back with a warning)",
    ("", "namespaces", "watch"): "kopf limited to namespaces follows their deletion and re-creation",
    ("kopf.dev", "kopfpeerings", "list"): PEERING_IN_NAMESPACES,
    ("kopf.dev", "kopfpeerings", "watch"): PEERING_IN_NAMESPACES,
    ("kopf.dev", "kopfpeerings", "patch"): PEERING_IN_NAMESPACES,
}


def _manifest(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "examples" / "gitops" / "models" / name).read_text())


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def _play_job_lifecycle(cluster: Any, kubeapi: Any) -> None:
    """A job from creation to success, then a spec change (a second run replaces the first)."""
    import kubedistill_harness as harness

    job = _manifest("distillationjob.yaml")
    # An S3 output whose credentials Secret the operator checks before starting anything.
    job["spec"]["output"] = {"uri": f"s3://models/{JOB}", "s3CredentialsSecret": "s3-credentials"}
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                    "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}}, NAMESPACE)
    # Data on a claim, which the operator checks too.
    job["spec"]["dataset"]["uri"] = "pvc://datasets/bbc-news"
    cluster.create(harness.volume_claim("datasets"), NAMESPACE)
    cluster.create(job, NAMESPACE)
    run = f"{JOB}-g1"
    cluster.wait_for(lambda: cluster.get(kubeapi.RAY_JOBS, NAMESPACE, run), what="the first RayJob")
    # KubeRay's part: the Ray cluster comes up and runs the pipeline.
    cluster.patch_status(kubeapi.RAY_JOBS, NAMESPACE, run, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    cluster.wait_for(lambda: (cluster.get(kubeapi.DISTILLATION_JOBS, NAMESPACE, JOB).get("status") or {})
                     .get("phase") == "Running", what="phase Running")
    # The pipeline's part: its results, through the status subresource.
    results = {"gatePassed": True, "retention": 0.97, "recommendedThreshold": 0.8, "modelVersion": run,
               "artifactUri": f"s3://models/{JOB}/model_repository"}
    cluster.patch_status(kubeapi.DISTILLATION_JOBS, NAMESPACE, JOB, {"results": results})
    cluster.patch_status(kubeapi.RAY_JOBS, NAMESPACE, run,
                         {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    cluster.wait_for(lambda: (cluster.get(kubeapi.DISTILLATION_JOBS, NAMESPACE, JOB).get("status") or {})
                     .get("phase") == "Succeeded", what="phase Succeeded")


def _play_student_lifecycle(cluster: Any, kubeapi: Any) -> None:
    """A StudentDeployment served from the job, ready, then without autoscaling."""
    cluster.create(_manifest("studentdeployment.yaml"), NAMESPACE)
    deployment = cluster.wait_for(lambda: cluster.get(kubeapi.DEPLOYMENTS, NAMESPACE, SD), what="the Deployment")
    cluster.wait_for(lambda: cluster.get(kubeapi.HPAS, NAMESPACE, SD), what="the HPA")
    # The Deployment controller's part.
    replicas = int(deployment["spec"].get("replicas") or 2)
    cluster.patch_status(kubeapi.DEPLOYMENTS, NAMESPACE, SD, {
        "observedGeneration": deployment["metadata"].get("generation", 1), "replicas": replicas,
        "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True",
                                                                  "reason": "NewReplicaSetAvailable"}]})
    cluster.wait_for(lambda: (cluster.get(kubeapi.STUDENT_DEPLOYMENTS, NAMESPACE, SD).get("status") or {})
                     .get("phase") == "Ready", what="StudentDeployment Ready")
    cluster.patch(kubeapi.STUDENT_DEPLOYMENTS, NAMESPACE, SD, {"spec": {"autoscaling": None, "replicas": 2}})
    cluster.wait_for(lambda: cluster.get(kubeapi.HPAS, NAMESPACE, SD) is None, what="the HPA removed")
    # Someone deletes the Deployment: the operator's level-based refresh finds it missing and recreates it.
    uid = cluster.get(kubeapi.DEPLOYMENTS, NAMESPACE, SD)["metadata"]["uid"]
    cluster.delete(kubeapi.DEPLOYMENTS, NAMESPACE, SD)
    cluster.wait_for(lambda: (cluster.get(kubeapi.DEPLOYMENTS, NAMESPACE, SD) or {"metadata": {"uid": uid}})
                     ["metadata"]["uid"] != uid, what="the Deployment recreated")
    # The live status: the operator lists the router pods whose metrics it reads.
    cluster.wait_for(lambda: any(c.resource == "pods" and c.verb == "list" for c in cluster.operator_calls),
                     what="the router pods listed for status.live")


def _play_spec_change_and_deletion(cluster: Any, kubeapi: Any) -> None:
    # The second run's pods use an account of the user's, which the operator checks exists.
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer"}}, NAMESPACE)
    cluster.patch(kubeapi.DISTILLATION_JOBS, NAMESPACE, JOB, {"spec": {"training": {"epochs": 8},
                                                                       "ray": {"serviceAccountName": "trainer"}}})
    cluster.wait_for(lambda: cluster.get(kubeapi.RAY_JOBS, NAMESPACE, f"{JOB}-g2"), what="the second RayJob")
    cluster.wait_for(lambda: cluster.get(kubeapi.RAY_JOBS, NAMESPACE, f"{JOB}-g1") is None,
                     what="the first RayJob deleted")
    # A restart: kopf lists and resumes everything it finds.
    cluster.restart_operator()
    cluster.wait_for(lambda: _condition(cluster.get(kubeapi.STUDENT_DEPLOYMENTS, NAMESPACE, SD), "ModelAvailable"),
                     what="the StudentDeployment refreshed after the restart")
    for resource, name in ((kubeapi.STUDENT_DEPLOYMENTS, SD), (kubeapi.DISTILLATION_JOBS, JOB)):
        cluster.delete(resource, NAMESPACE, name)
        cluster.wait_for(lambda r=resource, n=name: cluster.get(r, NAMESPACE, n) is None,
                         what=f"{name} gone (finalizer released)")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Any]:
    """Run the operator through the scenario once; return its API requests and the pipeline's RBAC."""
    import kubedistill_harness as harness
    kubeapi = pytest.importorskip("kubedistill_operator.kubeapi")
    with harness.OperatorHarness(tmp_path_factory.mktemp("rbac"), live_status_seconds=0.5) as cluster:
        cluster.start_operator()
        _play_job_lifecycle(cluster, kubeapi)
        roles = cluster.list(kubeapi.ROLES, NAMESPACE)
        bindings = cluster.list(kubeapi.ROLE_BINDINGS, NAMESPACE)
        ray_job = copy.deepcopy(cluster.get(kubeapi.RAY_JOBS, NAMESPACE, f"{JOB}-g1"))
        _play_student_lifecycle(cluster, kubeapi)
        _play_spec_change_and_deletion(cluster, kubeapi)
        calls = cluster.operator_calls
    return {"calls": calls, "roles": roles, "bindings": bindings, "ray_job": ray_job}


@pytest.fixture(scope="module")
def recorded_peering(tmp_path_factory) -> list[Any]:
    """`kubedistill operator --peering=kubedistill` (the chart's peering variant) until its first keep-alive."""
    import kubedistill_harness as harness
    from kubedistill_operator.kubeapi import Resource

    peerings = Resource("kopf.dev", "v1", "clusterkopfpeerings")
    with harness.OperatorHarness(tmp_path_factory.mktemp("peering")) as cluster:
        # The chart's ClusterKopfPeering, as `helm install` creates it.
        cluster.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubedistill"}},
                       namespace=None)
        cluster.start_operator(peering="kubedistill")
        cluster.wait_for(lambda: (cluster.get(peerings, None, "kubedistill") or {}).get("status"),
                         what="the operator's keep-alive in the peering object")
        return cluster.operator_calls


def _requests(calls: list[Any]) -> list[Request]:
    """The operator's resource requests in RBAC terms (discovery requests need no rule: system:discovery)."""
    verbs = {"PUT": "update"}  # the recorder files PUT and PATCH under "patch"; RBAC tells them apart
    return [
        Request(verbs.get(c.method, c.verb), c.group, c.rbac_resource, c.namespace, c.name)
        for c in calls
        if c.group is not None and c.rbac_resource is not None
    ]


def _cluster_rules(render) -> list[dict[str, Any]]:
    return one(render(), "ClusterRole")["rules"]


@pytest.mark.slow
def test_every_recorded_request_is_allowed_by_the_chart(recorded, render):
    rules = _cluster_rules(render)
    requests = _requests(recorded["calls"])
    assert len(requests) > 20, "the scenario exercised the operator"
    refused = sorted({str(r) for r in requests if not any(allows(rule, r) for rule in rules)})
    assert not refused, f"the chart's ClusterRole refuses requests the operator made: {refused}"


@pytest.mark.slow
def test_every_request_of_a_peering_operator_is_allowed(recorded_peering, render):
    rules = one(render(VARIANTS["peering"]), "ClusterRole")["rules"]
    requests = _requests(recorded_peering)
    assert {r.verb for r in requests if r.resource == "clusterkopfpeerings"} == {"list", "watch", "patch"}
    refused = sorted({str(r) for r in requests if not any(allows(rule, r) for rule in rules)})
    assert not refused, f"the peering variant's ClusterRole refuses: {refused}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["default", "peering"])
def test_every_granted_verb_is_needed(recorded, recorded_peering, render, variant):
    used = {(r.group, r.resource, r.verb) for r in _requests(recorded["calls"] + recorded_peering)}
    granted = grants(one(render(VARIANTS[variant]), "ClusterRole")["rules"])
    unused = sorted(granted - used - set(NOT_EXERCISED))
    assert not unused, f"rules no recorded request needs (remove them, or list them in NOT_EXERCISED): {unused}"
    stale = sorted(set(NOT_EXERCISED) & used)
    assert not stale, f"listed as not exercised but recorded: {stale}"
    assert set(NOT_EXERCISED) <= granted


@pytest.mark.slow
def test_single_namespace_rules_are_the_same_needs(recorded, recorded_peering, render):
    objects = render(VARIANTS["peering-single-namespace"])
    granted = grants([rule for kind in ("Role", "ClusterRole") for r in by_kind(objects, kind) for rule in r["rules"]])
    used = {(r.group, r.resource, r.verb) for r in _requests(recorded["calls"] + recorded_peering)}
    unexplained = sorted(granted - used - set(NOT_EXERCISED) - set(NAMESPACED_ONLY))
    assert not unexplained, unexplained
    namespaced = grants([rule for r in by_kind(objects, "Role") for rule in r["rules"]])
    # The per-namespace Role: every namespaced need (kopfpeerings standing in for clusterkopfpeerings).
    needs = {(g, "kopfpeerings" if res == "clusterkopfpeerings" else res, v) for g, res, v in used}
    missing = sorted(needs - {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
                     - namespaced)
    assert not missing, f"the per-namespace Role lacks what the operator uses: {missing}"


@pytest.mark.slow
def test_pipeline_account_may_only_report_its_own_jobs_status(recorded, render):
    account = f"{JOB}-pipeline"
    (role,) = [r for r in recorded["roles"] if r["metadata"]["name"] == account]
    assert role["rules"] == [{
        "apiGroups": ["kubedistill.io"],
        "resources": ["distillationjobs/status"],
        "resourceNames": [JOB],
        "verbs": ["patch"],
    }]
    (binding,) = [b for b in recorded["bindings"] if b["metadata"]["name"] == account]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # Kubernetes lets the operator create this Role only if it holds every right in it itself.
    operator_rules = _cluster_rules(render)
    for verb in role["rules"][0]["verbs"]:
        assert any(allows(rule, Request(verb, "kubedistill.io", "distillationjobs/status", NAMESPACE, JOB))
                   for rule in operator_rules)
    # The Ray pods run as that account.
    spec = recorded["ray_job"]["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    assert {p["spec"].get("serviceAccountName") for p in pods} == {account}


def test_not_exercised_reasons_are_written(render):
    for key, reason in {**NOT_EXERCISED, **NAMESPACED_ONLY}.items():
        assert len(reason) > 20, key
