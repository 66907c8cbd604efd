"""The builders as pure functions: a resource in, the objects the operator creates out, all schema-valid."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubedistill_operator import naming
from kubedistill_operator.builders import ModelSourceInfo, build_job_children, build_student_children
from kubedistill_operator.builders.job import ENTRYPOINT, SPEC_KEY, resolved_job
from kubedistill_operator.builders.student import triton_image
from kubedistill_operator.config import OperatorConfig
from kubedistill_validation import validate_object

from kubedistill.api import DistillationJob, StudentDeployment, parse_resource
from kubedistill.env import PipelineEnv, TritonEnv
from kubedistill.routerconfig import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig(job_image="registry.example/jobs:1", router_image="registry.example/router:1",
                        image_pull_secrets=("regcred",))
UID = "0f5b8e3c-8d1e-4c52-9a38-2f6a7d2b1c11"


def _manifest(path: str, **meta: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    doc["metadata"].update({"namespace": "ml", "uid": UID, "generation": 3, **meta})
    return doc


def _example_with(path: str, changes: dict[str, Any] | None) -> Any:
    """An example parsed, with `changes` ({"dotted.spec.path": value}) made to its spec first."""
    doc = _manifest(path)
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = doc["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_resource(doc)


def job(changes: dict[str, Any] | None = None) -> DistillationJob:
    parsed = _example_with("examples/quickstart/distillationjob.yaml", changes)
    assert isinstance(parsed, DistillationJob)
    return parsed


def student(changes: dict[str, Any] | None = None) -> StudentDeployment:
    parsed = _example_with("examples/quickstart/studentdeployment.yaml", changes)
    assert isinstance(parsed, StudentDeployment)
    return parsed


SOURCE = ModelSourceInfo("pvc://models/jobs/bbc/model_repository", "bbc-news-topics-g3", 0.82)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def ray_pods(ray_job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = ray_job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


# DistillationJob.
def test_job_children_are_named_labelled_and_owned():
    objects = build_job_children(job(), CONFIG)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "bbc-news-topics-spec"),
        ("ServiceAccount", "bbc-news-topics-pipeline"),
        ("Role", "bbc-news-topics-pipeline"),
        ("RoleBinding", "bbc-news-topics-pipeline"),
        ("RayJob", "bbc-news-topics-g3"),
    ]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/name": "kubedistill", "app.kubernetes.io/managed-by": "kubedistill-operator",
            "app.kubernetes.io/instance": "bbc-news-topics", "app.kubernetes.io/component": "pipeline"}
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob",
                         "name": "bbc-news-topics", "uid": UID, "controller": True, "blockOwnerDeletion": True}


def test_spec_config_map_holds_the_resolved_job():
    config_map = by_kind(build_job_children(job(), CONFIG))["ConfigMap"]
    wire = yaml.safe_load(config_map["data"][SPEC_KEY])
    reread = parse_resource(wire)
    assert isinstance(reread, DistillationJob)
    assert reread.spec == resolved_job(job(), CONFIG).spec
    assert wire["spec"]["ray"]["image"] == CONFIG.job_image  # the operator's job image, resolved
    assert wire["spec"]["training"]["batchSize"] == 32 and wire["spec"]["distillation"]["topK"] == 32  # defaults
    assert "status" not in wire and set(wire["metadata"]) <= {"name", "namespace", "labels", "uid", "generation"}


def test_pipeline_role_allows_only_its_own_jobs_status():
    objects = by_kind(build_job_children(job(), CONFIG))
    assert objects["Role"]["rules"] == [{"apiGroups": ["kubedistill.io"], "resources": ["distillationjobs/status"],
                                         "resourceNames": ["bbc-news-topics"], "verbs": ["patch"]}]
    assert objects["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "bbc-news-topics-pipeline", "namespace": "ml"}]
    assert objects["RoleBinding"]["roleRef"]["name"] == "bbc-news-topics-pipeline"


def test_ray_job_runs_the_pipeline_entrypoint_and_shuts_down():
    ray_job = by_kind(build_job_children(job({"ray.activeDeadlineSeconds": 7200}), CONFIG))["RayJob"]
    spec = ray_job["spec"]
    assert spec["entrypoint"] == ENTRYPOINT == \
        "python -m kubedistill_jobs.entrypoint /etc/kubedistill/distillationjob.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 600 and spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 7200
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    for pod in ray_pods(ray_job):
        (container,) = pod["spec"]["containers"]
        assert container["image"] == CONFIG.job_image
        assert {"name": "spec", "mountPath": "/etc/kubedistill", "readOnly": True} in container["volumeMounts"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KUBEDISTILL_JOB_NAME"] == "bbc-news-topics" and env["KUBEDISTILL_JOB_NAMESPACE"] == "ml"
        assert pod["spec"]["serviceAccountName"] == "bbc-news-topics-pipeline"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert {"name": "spec", "configMap": {"name": "bbc-news-topics-spec"}} in pod["spec"]["volumes"]
    worker = ray_pods(ray_job)[1]["spec"]["containers"][0]
    assert worker["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}


def test_gpu_workers_node_placement_and_own_account():
    changed = job({
        "ray.workers.gpus": 2, "ray.nodeSelector": {"nvidia.com/gpu.product": "A100"},
        "ray.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "ray.serviceAccountName": "team-ml", "ray.image": "my.registry/kd:2",
    })
    ray_job = by_kind(build_job_children(changed, CONFIG))["RayJob"]
    head, worker = ray_pods(ray_job)
    assert worker["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in str(head["spec"]["containers"][0].get("resources", {}))
    for pod in (head, worker):
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
        assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                               "effect": "NoSchedule"}]
        assert pod["spec"]["serviceAccountName"] == "team-ml"
        assert pod["spec"]["containers"][0]["image"] == "my.registry/kd:2"


def test_pvc_output_is_mounted_where_the_uris_resolve():
    changed = job({"output.uri": "pvc://models/jobs/bbc", "dataset.uri": "pvc://datasets/bbc"})
    for pod in ray_pods(by_kind(build_job_children(changed, CONFIG))["RayJob"]):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/mnt/pvc/models"]["readOnly"] is False
        assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
        claims = {volumes[m["name"]]["persistentVolumeClaim"]["claimName"] for m in mounts.values()
                  if "persistentVolumeClaim" in volumes[m["name"]]}
        assert claims == {"models", "datasets"}


def test_s3_output_takes_credentials_from_the_secret_and_endpoint_teacher_its_key():
    changed = job({"output.uri": "s3://bucket/jobs/bbc", "output.s3CredentialsSecret": "s3-creds"})
    container = ray_pods(by_kind(build_job_children(changed, CONFIG))["RayJob"])[0]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    doc = _manifest("examples/causal-lm/distillationjob.yaml")
    doc["spec"]["distillation"]["topK"] = 20
    doc["spec"]["teacher"] = {"endpoint": {"url": "https://llm.example/v1", "model": "big",
                                           "apiKeySecretRef": {"name": "llm-key", "key": "token"}}}
    doc["spec"]["student"] = {"uri": "hf://org/small"}
    endpoint_job = parse_resource(doc)
    container = ray_pods(by_kind(build_job_children(endpoint_job, CONFIG))["RayJob"])[0]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBEDISTILL_TEACHER_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "llm-key", "key": "token"}}
    assert "envFrom" not in container


def test_pipeline_reads_back_the_env_the_operator_sets():
    parsed = job()
    ray_job = by_kind(build_job_children(parsed, CONFIG))["RayJob"]
    for pod in ray_pods(ray_job):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        read = PipelineEnv.from_env(env)
        assert (read.job_name, read.job_namespace) == ("bbc-news-topics", "ml")
        run = naming.ray_job_name("bbc-news-topics", parsed.metadata.generation)
        assert read.run_id == ray_job["metadata"]["name"] == run
        assert read.teacher_api_key is None  # only ever from a Secret (valueFrom), never a literal value


def test_env_models_round_trip_and_name_the_bad_variable():
    settings = TritonEnv(max_batch_size=8, instance_kind="KIND_GPU", dynamic_batching=False,
                         preferred_batch_sizes=(2, 4))
    env = settings.to_env()
    assert env == {"KUBEDISTILL_TRITON_MAX_BATCH_SIZE": "8", "KUBEDISTILL_TRITON_INSTANCE_KIND": "KIND_GPU",
                   "KUBEDISTILL_TRITON_DYNAMIC_BATCHING": "false", "KUBEDISTILL_TRITON_PREFERRED_BATCH_SIZES": "2,4"}
    assert TritonEnv.from_env(env) == settings
    assert TritonEnv.from_env({}) == TritonEnv()
    with pytest.raises(ValueError, match="KUBEDISTILL_TRITON_INSTANCE_KIND='KIND_TPU'"):
        TritonEnv.from_env({"KUBEDISTILL_TRITON_INSTANCE_KIND": "KIND_TPU"})
    with pytest.raises(ValueError, match="KUBEDISTILL_TRITON_MAX_QUEUE_DELAY_US='-5'"):
        TritonEnv.from_env({"KUBEDISTILL_TRITON_MAX_QUEUE_DELAY_US": "-5"})
    with pytest.raises(KeyError):
        PipelineEnv.env_name("job")
    assert "s3cret" not in repr(PipelineEnv(teacher_api_key="s3cret"))


def test_run_name_is_deterministic_and_changes_with_the_generation():
    assert naming.ray_job_name("bbc", 1) == naming.ray_job_name("bbc", 1) == "bbc-g1"
    assert naming.ray_job_name("bbc", 2) != naming.ray_job_name("bbc", 1)
    assert build_job_children(job(), CONFIG) == build_job_children(job(), CONFIG)
    longest = "a" * 40  # metadata.name's bound: KubeRay appends "-" and 5 characters to the RayJob's name
    assert len(naming.ray_job_name(longest, 999_999)) + 6 <= 63


# StudentDeployment.
def test_student_children_and_router_config():
    objects = build_student_children(student(), SOURCE, CONFIG)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "bbc-news-topics-router"), ("Deployment", "bbc-news-topics"), ("Service", "bbc-news-topics")]
    config_map = by_kind(objects)["ConfigMap"]
    expected = RouterConfig.from_spec("bbc-news-topics", student().spec, threshold=0.82).to_yaml()
    assert config_map["data"]["router.yaml"] == expected
    assert RouterConfig.model_validate(yaml.safe_load(expected)).threshold == 0.82
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "StudentDeployment"


def test_router_config_carries_the_coalescing_settings():
    default = RouterConfig.from_spec("s", student().spec)
    assert (default.coalesce, default.max_calls_in_flight) == (True, None)
    tuned = RouterConfig.from_spec("s", student({"router.coalescing.maxCallsInFlight": 3}).spec)
    assert (tuned.coalesce, tuned.max_calls_in_flight) == (True, 3)
    assert not RouterConfig.from_spec("s", student({"router.coalescing.enabled": False}).spec).coalesce


def test_deployment_fetches_the_model_and_runs_triton_behind_the_router():
    objects = by_kind(build_student_children(student(), SOURCE, CONFIG))
    deployment, service = objects["Deployment"], objects["Service"]
    pod = deployment["spec"]["template"]
    (fetch,) = pod["spec"]["initContainers"]
    assert fetch["command"] == ["python", "-m", "kubedistill_router.fetch", SOURCE.model_repository_uri, "/models"]
    assert fetch["image"] == CONFIG.router_image
    triton, router = pod["spec"]["containers"]
    assert triton["name"] == "tritonserver" and "--model-repository=/models" in triton["command"]
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert router["command"] == ["python", "-m", "kubedistill_router", "--config", "/etc/kubedistill/router.yaml"]
    assert router["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
    assert deployment["spec"]["replicas"] == 2
    assert pod["metadata"]["annotations"][naming.MODEL_VERSION_ANNOTATION] == "bbc-news-topics-g3"
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} \
        in pod["spec"]["volumes"]
    assert "nvidia.com/gpu" not in str(triton.get("resources", {}))


def test_every_container_is_hardened():
    objects = build_job_children(job(), CONFIG) + build_student_children(student(), SOURCE, CONFIG)
    pods = [*ray_pods(by_kind(objects)["RayJob"]), by_kind(objects)["Deployment"]["spec"]["template"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
    serving = by_kind(objects)["Deployment"]["spec"]["template"]
    assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in containers(serving))


def test_gpus_autoscaling_teacher_key_and_images():
    sd = student({
        "triton.gpus": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
        "router.teacher": {"url": "https://teacher.example", "apiKeySecretRef": {"name": "teacher", "key": "k"}},
    })
    objects = by_kind(build_student_children(sd, SOURCE, CONFIG))
    triton, router = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert triton["resources"] == {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "bbc-news-topics"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
    assert "/var/run/secrets/kubedistill/teacher" in mounts
    assert RouterConfig.model_validate(yaml.safe_load(objects["ConfigMap"]["data"]["router.yaml"])) \
        .teacher_api_key_file == "/var/run/secrets/kubedistill/teacher/api-key"
    assert triton_image(student(), OperatorConfig(triton_image="mirror/triton:1")) == "mirror/triton:1"
    assert triton_image(student({"triton.image": "own/triton:2"}), OperatorConfig(triton_image="x")) == "own/triton:2"


def test_router_token_comes_from_its_secret_by_reference_and_is_checked_for():
    from kubedistill_operator.reconcile.references import Reference, student_references

    sd = student({"router.auth": {"apiKeySecretRef": {"name": "router-token", "key": "token"}}})
    objects = by_kind(build_student_children(sd, SOURCE, CONFIG))
    router = objects["Deployment"]["spec"]["template"]["spec"]["containers"][1]
    assert router["env"] == [{"name": "KUBEDISTILL_ROUTER_API_KEY",
                              "valueFrom": {"secretKeyRef": {"name": "router-token", "key": "token"}}}]
    assert RouterConfig.model_validate(yaml.safe_load(objects["ConfigMap"]["data"]["router.yaml"])).require_api_key
    secrets = [r for r in student_references(sd, SOURCE) if r.kind == "Secret"]
    assert secrets == [Reference("Secret", "router-token", "spec.router.auth.apiKeySecretRef", ("token",))]
    plain = by_kind(build_student_children(student(), SOURCE, CONFIG))
    assert "env" not in plain["Deployment"]["spec"]["template"]["spec"]["containers"][1]
    assert "require_api_key" not in plain["ConfigMap"]["data"]["router.yaml"]  # no roll for deployments without


def test_a_new_model_or_threshold_rolls_the_pods_and_nothing_else_does():
    def template(source: ModelSourceInfo) -> dict[str, Any]:
        return by_kind(build_student_children(student(), source, CONFIG))["Deployment"]["spec"]["template"]

    same = template(copy.copy(SOURCE))
    assert same == template(SOURCE)
    newer = template(ModelSourceInfo(SOURCE.model_repository_uri, "bbc-news-topics-g4", 0.82))
    assert newer["metadata"]["annotations"] != same["metadata"]["annotations"]
    threshold = template(ModelSourceInfo(SOURCE.model_repository_uri, SOURCE.model_version, 0.9))
    assert threshold["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION] != \
        same["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION]


def test_model_repository_uri_source_has_a_stable_version():
    sd = parse_resource({**_manifest("examples/quickstart/studentdeployment.yaml"),
                         "spec": {"source": {"modelRepositoryUri": "s3://b/m/model_repository",
                                             "s3CredentialsSecret": "s3"}}})
    assert isinstance(sd, StudentDeployment)
    source = ModelSourceInfo.from_uri(sd)
    assert source.model_version == ModelSourceInfo.from_uri(sd).model_version
    (fetch,) = by_kind(build_student_children(sd, source, CONFIG))["Deployment"]["spec"]["template"]["spec"][
        "initContainers"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3"}}]


# Every object the builders make validates against the real schemas.
JOB_VARIANTS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "gpus": {"ray.workers.gpus": 4, "ray.nodeSelector": {"gpu": "a100"},
             "ray.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
             "ray.activeDeadlineSeconds": 3600},
    "pvc": {"output.uri": "pvc://models/jobs/bbc", "dataset.uri": "pvc://data.set/bbc"},
    "s3": {"output.uri": "s3://bucket/x", "output.s3CredentialsSecret": "creds"},
}
STUDENT_VARIANTS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "gpu-hpa": {"triton.gpus": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}, "replicas": 1,
                "triton.resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}},
    "teacher": {"router.teacher": {"url": "http://t:9000", "apiKeySecretRef": {"name": "t", "key": "k"}},
                "service.type": "LoadBalancer", "service.port": 9090},
    "auth": {"router.auth": {"apiKeySecretRef": {"name": "router-token", "key": "token"}}},
}


@pytest.mark.parametrize("variant", sorted(JOB_VARIANTS))
def test_job_objects_validate(variant):
    for obj in build_job_children(job(JOB_VARIANTS[variant]), CONFIG):
        validate_object(obj)


@pytest.mark.parametrize("variant", sorted(STUDENT_VARIANTS))
def test_student_objects_validate(variant):
    for obj in build_student_children(student(STUDENT_VARIANTS[variant]), SOURCE, CONFIG):
        validate_object(obj)


def test_validation_catches_a_wrong_field():
    ray_job = by_kind(build_job_children(job(), CONFIG))["RayJob"]
    ray_job["spec"]["shutdownAfterJobFinish"] = True  # a typo KubeRay's API server would silently prune
    with pytest.raises(AssertionError, match="shutdownAfterJobFinish"):
        validate_object(ray_job)
