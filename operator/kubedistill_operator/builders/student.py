"""StudentDeployment → the router's ConfigMap, a Deployment (fetch → Triton + router), a Service and an HPA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kubedistill.api import StudentDeployment
from kubedistill.api.studentdeployment import TRITON_IMAGE, TRITON_VLLM_IMAGE, RouterTier
from kubedistill.env import TritonEnv
from kubedistill.routerconfig import (
    MODEL_REPOSITORY_DIR,
    ROUTER_API_KEY_ENV,
    ROUTER_CONFIG_DIR,
    ROUTER_CONFIG_FILE,
    TEACHER_API_KEY_FILE,
    RouterConfig,
)
from kubedistill.uris import parse_uri, pvc_claim
from kubedistill_operator import naming
from kubedistill_operator.builders import common, vllm
from kubedistill_operator.config import OperatorConfig

KIND = "StudentDeployment"
TRITON_HTTP, TRITON_GRPC, TRITON_METRICS = 8000, 8001, 8002
TRITON_PORTS = (TRITON_HTTP, TRITON_GRPC, TRITON_METRICS)


@dataclass(frozen=True)
class ModelSourceInfo:
    """What the deployment serves, resolved from its job's results or from `source.modelRepositoryUri`."""

    model_repository_uri: str
    model_version: str
    threshold: float | None = None  # the threshold in use: the spec's, else the job's recommendation
    s3_credentials_secret: str | None = None
    # router.tiers with the job's recommended thresholds filled in (None: the spec's tiers as they are)
    tiers: tuple[RouterTier, ...] | None = None

    @classmethod
    def from_uri(cls, sd: StudentDeployment) -> ModelSourceInfo:
        """A deployment of a model repository URI; its version is a digest of the URI."""
        uri = sd.spec.source.model_repository_uri
        assert uri is not None
        return cls(
            model_repository_uri=uri,
            model_version=hashlib.sha256(uri.encode()).hexdigest()[:12],
            threshold=sd.spec.router.threshold,
            s3_credentials_secret=sd.spec.source.s3_credentials_secret,
        )


def router_config(sd: StudentDeployment, source: ModelSourceInfo) -> RouterConfig:
    return RouterConfig.from_spec(sd.metadata.name, sd.spec, threshold=source.threshold,
                                  tiers=list(source.tiers) if source.tiers is not None else None)


def router_config_map(sd: StudentDeployment, source: ModelSourceInfo) -> dict[str, Any]:
    """The router's config, and with `triton.backend: vllm` the vLLM models' files the fetch step writes."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(sd, naming.router_config_map_name(sd.metadata.name)),
        "data": {ROUTER_CONFIG_FILE: router_config(sd, source).to_yaml(), **_vllm_files(sd)},
    }


def _vllm_files(sd: StudentDeployment) -> dict[str, str]:
    return vllm.config_map_data(sd) if sd.spec.triton.backend == "vllm" else {}


def triton_image(sd: StudentDeployment, config: OperatorConfig) -> str:
    """The spec's image when it names one; else the operator's override, else the API default. With
    `backend: vllm` the default is Triton's vLLM image (the operator's override is for the other backends)."""
    named = "image" in sd.spec.triton.model_fields_set and sd.spec.triton.image != TRITON_IMAGE
    if named:
        return sd.spec.triton.image
    if sd.spec.triton.backend == "vllm":
        return TRITON_VLLM_IMAGE
    return config.triton_image or sd.spec.triton.image


def deployment(sd: StudentDeployment, source: ModelSourceInfo, config: OperatorConfig,
               include_replicas: bool = True) -> dict[str, Any]:
    """The serving Deployment. `include_replicas=False` leaves spec.replicas to an HPA on updates."""
    name = sd.metadata.name
    spec = sd.spec
    on_vllm = spec.triton.backend == "vllm"
    # The hash covers what the fetch step writes too: new engine arguments roll the pods.
    config_text = router_config(sd, source).to_yaml() + "".join(_vllm_files(sd).values())
    volumes: list[dict[str, Any]] = [
        {"name": "models", "emptyDir": {}},
        {"name": "router-config", "configMap": {"name": naming.router_config_map_name(name)}},
        {"name": "tmp", "emptyDir": {}},
        # vLLM's workers share tensors through /dev/shm (NCCL with several GPUs): more room than ONNX Runtime needs.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi" if on_vllm else "256Mi"}},
    ]
    fetch_mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODEL_REPOSITORY_DIR},
                                          {"name": "tmp", "mountPath": "/tmp"}]
    if on_vllm:  # the vLLM models' files, rendered above into the ConfigMap
        fetch_mounts.append({"name": "router-config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True})
    claim = pvc_claim(source.model_repository_uri)
    if claim:
        volume, mount = common.pvc_volume(claim, True, 0)
        volumes.append(volume)
        fetch_mounts.append(mount)
    router_mounts: list[dict[str, Any]] = [
        {"name": "router-config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True},
        {"name": "models", "mountPath": MODEL_REPOSITORY_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    router_env: list[dict[str, Any]] = []
    router_env_from: list[dict[str, Any]] = []
    capture = spec.router.capture
    if capture is not None and (capture_claim := pvc_claim(capture.uri)):
        if capture_claim == claim:  # one volume for one claim: writable, the fetch step's mount stays read-only
            volumes[-1]["persistentVolumeClaim"]["readOnly"] = False
            router_mounts.append({**fetch_mounts[-1], "readOnly": False})
        else:
            volume, mount = common.pvc_volume(capture_claim, False, 1)
            volumes.append(volume)
            router_mounts.append(mount)
    if capture is not None and capture.s3_credentials_secret and parse_uri(capture.uri).scheme == "s3":
        router_env_from.append({"secretRef": {"name": capture.s3_credentials_secret}})
    teacher = spec.router.teacher
    if teacher and teacher.api_key_secret_ref:
        key_dir, key_file = TEACHER_API_KEY_FILE.rsplit("/", 1)
        volumes.append({"name": "teacher-api-key", "secret": {
            "secretName": teacher.api_key_secret_ref.name,
            "items": [{"key": teacher.api_key_secret_ref.key, "path": key_file}],
        }})
        router_mounts.append({"name": "teacher-api-key", "mountPath": key_dir, "readOnly": True})

    fetch: dict[str, Any] = {
        "name": "fetch-model",
        "image": spec.router.image or config.router_image,
        "command": ["python", "-m", "kubedistill_router.fetch", source.model_repository_uri, MODEL_REPOSITORY_DIR],
        "env": _triton_env(sd),
        "volumeMounts": fetch_mounts,
        "securityContext": common.container_security_context(),
    }
    if parse_uri(source.model_repository_uri).scheme == "s3" and source.s3_credentials_secret:
        fetch["envFrom"] = [{"secretRef": {"name": source.s3_credentials_secret}}]

    health = {"port": "triton-http", "scheme": "HTTP"}
    triton: dict[str, Any] = {
        "name": "tritonserver",
        "image": triton_image(sd, config),
        "command": ["tritonserver", f"--model-repository={MODEL_REPOSITORY_DIR}", f"--http-port={TRITON_HTTP}",
                    f"--grpc-port={TRITON_GRPC}", f"--metrics-port={TRITON_METRICS}"],
        "ports": [
            {"name": "triton-http", "containerPort": TRITON_HTTP, "protocol": "TCP"},
            {"name": "triton-grpc", "containerPort": TRITON_GRPC, "protocol": "TCP"},
            {"name": "triton-metrics", "containerPort": TRITON_METRICS, "protocol": "TCP"},
        ],
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", **health}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 5},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", **health}, "periodSeconds": 5,
                           "failureThreshold": 3, "timeoutSeconds": 5},
        # Loading a model can take minutes: the startup probe holds the other probes off meanwhile.
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", **health}, "periodSeconds": 5,
                         "failureThreshold": 120, "timeoutSeconds": 5},
        "volumeMounts": [{"name": "models", "mountPath": MODEL_REPOSITORY_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": common.container_security_context(),
    }
    if on_vllm:
        # A read-only root: vLLM, torch and Triton's kernel caches go to /tmp; the weights are local (no hub).
        triton["env"] = common.env_list({"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "HF_HUB_OFFLINE": "1",
                                         "VLLM_NO_USAGE_STATS": "1"})
    triton_resources = common.resources(spec.triton.resources, spec.triton.gpus)
    if triton_resources:
        triton["resources"] = triton_resources

    router: dict[str, Any] = {
        "name": "router",
        "image": spec.router.image or config.router_image,
        "command": ["python", "-m", "kubedistill_router", "--config", f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}"],
        "ports": [{"name": "http", "containerPort": spec.service.port, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "volumeMounts": router_mounts,
        "securityContext": common.container_security_context(),
    }
    if spec.router.auth is not None:
        ref = spec.router.auth.api_key_secret_ref
        key = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
        router_env.append({"name": ROUTER_API_KEY_ENV, "valueFrom": key})  # the value never enters the spec
    if router_env:
        router["env"] = router_env
    if router_env_from:
        router["envFrom"] = router_env_from
    router_resources = common.resources(spec.router.resources)
    if router_resources:
        router["resources"] = router_resources

    pod: dict[str, Any] = {
        "securityContext": common.pod_security_context(),
        "automountServiceAccountToken": False,
        "initContainers": [fetch],
        "containers": [triton, router],
        "volumes": volumes,
    }
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = common.image_pull_secrets(config.image_pull_secrets)

    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(sd, naming.deployment_name(name)),
        "spec": {
            "selector": {"matchLabels": naming.selector(name, naming.ROUTER)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": naming.labels(name, naming.ROUTER),
                    # A new model or router config changes the template, so the pods roll.
                    "annotations": {
                        naming.MODEL_VERSION_ANNOTATION: source.model_version,
                        naming.CONFIG_HASH_ANNOTATION: hashlib.sha256(config_text.encode()).hexdigest()[:16],
                    },
                },
                "spec": pod,
            },
        },
    }
    if include_replicas:
        body["spec"]["replicas"] = spec.replicas
    return body


def service(sd: StudentDeployment) -> dict[str, Any]:
    name = sd.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(sd, naming.service_name(name)),
        "spec": {
            "type": sd.spec.service.type,
            "selector": naming.selector(name, naming.ROUTER),
            "ports": [{"name": "http", "port": sd.spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def horizontal_pod_autoscaler(sd: StudentDeployment) -> dict[str, Any] | None:
    scaling = sd.spec.autoscaling
    if scaling is None:
        return None
    name = sd.metadata.name
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(sd, naming.hpa_name(name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": naming.deployment_name(name)},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization},
            }}],
        },
    }


def build_student_children(sd: StudentDeployment, source: ModelSourceInfo,
                           config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything the operator creates for a deployment, in creation order."""
    children = [router_config_map(sd, source), deployment(sd, source, config), service(sd)]
    hpa = horizontal_pod_autoscaler(sd)
    if hpa is not None:
        children.append(hpa)
    return children


def _triton_env(sd: StudentDeployment) -> list[dict[str, str]]:
    """Serving settings for the fetch step, which writes them into the fetched models' config.pbtxt."""
    triton = sd.spec.triton
    batching = triton.dynamic_batching
    env = TritonEnv(
        max_batch_size=triton.max_batch_size,
        instance_count=triton.instance_count,
        instance_kind="KIND_GPU" if triton.gpus > 0 else "KIND_CPU",
        dynamic_batching=batching.enabled,
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes or ()),
        backend="vllm" if triton.backend == "vllm" else None,
    )
    return common.env_list(env.to_env())


def _meta(sd: StudentDeployment, name: str) -> dict[str, Any]:
    return common.metadata(name, sd.metadata.namespace, sd.metadata.name, naming.ROUTER, KIND, sd.metadata.uid)
