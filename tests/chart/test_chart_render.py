"""The chart lints and renders for every documented variant, and every object is valid Kubernetes."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import CHART, KUBE_VERSION, NAMESPACE, RELEASE, VARIANTS, by_kind, one

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# The Prometheus Operator's CRDs are not among kubernetes-validate's schemas and cannot be fetched
# here, so a ServiceMonitor is checked against the part of monitoring.coreos.com/v1 the chart uses,
# closed (additionalProperties: false) so that a misspelt field fails.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string", "maxLength": 63}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def _peering_schemas() -> dict[str, dict[str, Any]]:
    """The openAPIV3Schema of kopf's peering kinds, from the CRDs the chart ships."""
    crds = yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text())
    return {crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in crds}


def validate(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    if kind == "ServiceMonitor":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
    elif obj["apiVersion"] == "kopf.dev/v1":
        jsonschema.validate(obj, _peering_schemas()[kind])
        assert obj["metadata"]["name"]
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lints_clean(variant):
    helm = pytest.importorskip("helm_python")
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid(render, variant):
    objects = render(VARIANTS[variant])
    assert objects
    for obj in objects:
        try:
            validate(obj)
        except Exception as error:  # name the object that failed
            raise AssertionError(f"{variant}: {obj['kind']}/{obj['metadata'].get('name')}: {error}") from error


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_standard_labels_and_names(render, variant):
    for obj in render(VARIANTS[variant]):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kubedistill-0.1.0"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert len(obj["metadata"]["name"]) <= 63


def test_names_are_truncated_to_63_characters(render):
    long_release = "a-release-name-that-is-far-too-long-for-a-kubernetes-object-name"[:53]  # Helm's limit
    for obj in render({"watchNamespaces": ["news-topics"]}, name=long_release):
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name


def test_release_named_like_the_chart_is_not_doubled(render):
    deployment = one(render(name="kubedistill"), "Deployment")
    assert deployment["metadata"]["name"] == "kubedistill"
    deployment = one(render(name="ml"), "Deployment")
    assert deployment["metadata"]["name"] == "ml-kubedistill"


def _container(objects):
    deployment = one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_default_operator_is_one_hardened_replica_watching_the_cluster(render):
    objects = render()
    deployment, container = _container(objects)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert container["command"] == ["kubedistill"]
    assert container["args"] == ["operator", "--all-namespaces", "--standalone", "--liveness-port=8080",
                                 "--metrics-port=8081", "--live-status-seconds=30"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert container["ports"] == [{"name": probe["port"], "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": 8081, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Hardened: non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_ID": "metadata.name",  # kopf's peer identity (it falls back to getpass, which needs a passwd entry)
        "KUBEDISTILL_JOB_IMAGE": "ghcr.io/kubedistill/kubedistill-jobs:0.1.0",
        "KUBEDISTILL_ROUTER_IMAGE": "ghcr.io/kubedistill/kubedistill-router:0.1.0",
    }
    assert container["image"] == "ghcr.io/kubedistill/kubedistill-operator:0.1.0"
    assert not by_kind(objects, "ClusterKopfPeering") and not by_kind(objects, "ServiceMonitor")


def test_default_images_are_the_operators_own_defaults(chart):
    # Without the chart's env the operator falls back to the same images: one default, two places.
    config = pytest.importorskip("kubedistill_operator.config")
    values = chart.values
    assert f"{values['jobImage']['repository']}:0.1.0" == config.DEFAULT_JOB_IMAGE
    assert f"{values['routerImage']['repository']}:0.1.0" == config.DEFAULT_ROUTER_IMAGE


def test_image_values_reach_the_operator(render):
    objects = render(VARIANTS["images"])
    deployment, container = _container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "ghcr.io/kubedistill/kubedistill-operator@sha256:" + "a" * 64
    assert env["KUBEDISTILL_JOB_IMAGE"] == "registry.example.com/ml/kubedistill-jobs:0.1.0-cu128"
    assert env["KUBEDISTILL_ROUTER_IMAGE"] == "ghcr.io/kubedistill/kubedistill-router:0.1.0"
    assert env["KUBEDISTILL_TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert env["KUBEDISTILL_IMAGE_PULL_SECRETS"] == "ghcr,ngc"
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "ghcr"}]


def test_single_namespace_install_watches_only_its_namespaces(render):
    objects = render(VARIANTS["single-namespace"])
    _, container = _container(objects)
    assert container["args"][:3] == ["operator", "--namespace=news-topics", "--namespace=support-intents"]
    assert "--all-namespaces" not in container["args"]
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["news-topics", "support-intents"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["news-topics", "support-intents"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubedistill", "namespace": NAMESPACE}]
        assert binding["roleRef"]["kind"] == "Role"


def test_peering_runs_several_replicas_with_the_peering_object(render):
    objects = render(VARIANTS["peering"])
    deployment, container = _container(objects)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--peering=kubedistill" in container["args"] and "--standalone" not in container["args"]
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "kubedistill"

    objects = render(VARIANTS["peering-single-namespace"])
    (peering,) = by_kind(objects, "KopfPeering")
    assert peering["metadata"] == {**peering["metadata"], "name": "kubedistill", "namespace": "news-topics"}
    assert not by_kind(objects, "ClusterKopfPeering")

    objects = render({"replicaCount": 2, "peering": {"enabled": True, "create": False, "name": "shared"}})
    assert not by_kind(objects, "ClusterKopfPeering")
    assert "--peering=shared" in _container(objects)[1]["args"]


def _service_monitor(objects, name):
    (found,) = [o for o in by_kind(objects, "ServiceMonitor") if o["metadata"]["name"] == name]
    return found


def test_service_monitor_scrapes_every_router(render):
    objects = render(VARIANTS["servicemonitor"])
    routers = one(objects, "ServiceMonitor")
    assert routers["metadata"]["name"] == "kubedistill-routers"
    # The labels and the port name the operator gives every router Service.
    assert routers["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubedistill",
        "app.kubernetes.io/component": "router",
    }
    assert routers["spec"]["endpoints"][0]["port"] == "http"
    assert routers["spec"]["endpoints"][0]["path"] == "/metrics"
    assert routers["spec"]["namespaceSelector"] == {"any": True}
    assert routers["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    objects = render(VARIANTS["servicemonitor-single-namespace"])
    (routers,) = by_kind(objects, "ServiceMonitor")
    assert routers["spec"]["namespaceSelector"] == {"matchNames": ["news-topics"]}


def test_router_selector_matches_the_operators_router_labels(render):
    naming = pytest.importorskip("kubedistill_operator.naming")
    objects = render(VARIANTS["servicemonitor"])
    routers = one(objects, "ServiceMonitor")
    router_labels = naming.labels("news-topics", naming.ROUTER)
    assert routers["spec"]["selector"]["matchLabels"].items() <= router_labels.items()


def test_operator_pods_are_not_selected_as_routers(render):
    deployment = one(render(), "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_no_rbac_renders_no_roles_and_uses_the_named_account(render):
    objects = render(VARIANTS["no-rbac"])
    kinds = {o["kind"] for o in objects}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "kubedistill-operator"


def test_notes_show_the_next_commands(chart):
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["kubedistill/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/kubedistill" in notes
    assert "kubectl get crd rayjobs.ray.io" in notes
    assert "kubectl apply -k examples/gitops/models" in notes and (CHART.parents[1] / "examples/gitops/models").is_dir()
    notes = chart.render(VARIANTS["no-rbac"], name=RELEASE, namespace=NAMESPACE)["kubedistill/templates/NOTES.txt"]
    assert "rbac.create=false" in notes


def _operator_objects():
    """What the operator creates for the GitOps example pair (its own builders, `kubedistill manifests`)."""
    manifests = pytest.importorskip("kubedistill_operator.manifests")
    config = pytest.importorskip("kubedistill_operator.config")
    from kubedistill.api import load_manifests

    models = CHART.parents[1] / "examples" / "gitops" / "models"
    resources = load_manifests(models / "distillationjob.yaml") + load_manifests(models / "studentdeployment.yaml")
    return manifests.render(resources, config.OperatorConfig())


def test_router_service_monitor_selects_the_services_the_operator_creates(render):
    routers = one(render(VARIANTS["servicemonitor"]), "ServiceMonitor")
    services = by_kind(_operator_objects(), "Service")
    assert services
    for service in services:
        assert routers["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert routers["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def _selects(selector: dict[str, Any], obj: dict[str, Any]) -> bool:
    return selector["matchLabels"].items() <= obj["metadata"]["labels"].items()


def test_operator_metrics_are_served_behind_a_service_by_default(render):
    objects = render()
    deployment, container = _container(objects)
    service = one(objects, "Service")
    assert service["metadata"] == {**service["metadata"], "name": "kubedistill-metrics", "namespace": NAMESPACE}
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    # The Service reaches the operator's pods, and its target port is the container's metrics port.
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert "--metrics-port=8081" in container["args"]
    assert not by_kind(objects, "ServiceMonitor")

    objects = render({"metrics": {"port": 9400}})
    _, container = _container(objects)
    assert "--metrics-port=9400" in container["args"]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9400


def test_metrics_off_renders_no_service_and_turns_the_endpoint_off(render):
    objects = render(VARIANTS["no-metrics"])
    _, container = _container(objects)
    assert not by_kind(objects, "Service") and not by_kind(objects, "ServiceMonitor")
    assert "--metrics-port=0" in container["args"]  # the CLI's default port would serve it otherwise
    assert [p["name"] for p in container["ports"]] == ["http"]


def test_operator_service_monitor_scrapes_the_metrics_service(render):
    objects = render(VARIANTS["servicemonitor-operator"])
    monitor = _service_monitor(objects, "kubedistill-operator")
    service = one(objects, "Service")
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert _selects(monitor["spec"]["selector"], service)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # Each monitor keeps to its own: the routers' never selects the operator, the operator's never a router.
    routers = _service_monitor(objects, "kubedistill-routers")
    assert not _selects(routers["spec"]["selector"], service)
    for router_service in by_kind(_operator_objects(), "Service"):
        assert not _selects(monitor["spec"]["selector"], router_service)
    # Off by default, and with only the routers' on.
    assert [m["metadata"]["name"] for m in by_kind(render(VARIANTS["servicemonitor"]), "ServiceMonitor")] == [
        "kubedistill-routers"]


def test_operator_service_monitor_reaches_the_operators_endpoint():
    """The chart's port and path are the ones the operator serves: its CLI default, and /metrics."""
    cli = pytest.importorskip("kubedistill_operator.cli")
    from kubedistill.cli import build_parser

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    args = build_parser().parse_args(["operator", f"--metrics-port={values['metrics']['port']}"])
    options = cli.options_from_args(args)
    assert options.metrics_port == values["metrics"]["port"] != values["livenessProbe"]["port"]


def test_live_status_interval_reaches_the_operator(render):
    cli = pytest.importorskip("kubedistill_operator.cli")
    from kubedistill.cli import build_parser

    _, container = _container(render({"liveStatusSeconds": 12.5}))
    (flag,) = [a for a in container["args"] if a.startswith("--live-status-seconds=")]
    assert cli.options_from_args(build_parser().parse_args(["operator", flag])).live_status_seconds == 12.5


def test_metrics_names_stay_within_63_characters(render):
    long_release = "a-release-name-that-is-far-too-long-for-a-kubernetes-object-name"[:53]
    values = {"serviceMonitor": {"operator": {"enabled": True}, "routers": {"enabled": True}}}
    objects = render(values, name=long_release)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)
    names = [o["metadata"]["name"] for o in objects]
    for name in names:
        assert len(name) <= 63 and not name.endswith("-"), name
    assert {n.rpartition("-")[2] for n in names} >= {"metrics", "operator", "routers"}
