"""DistillationJob → its ConfigMap (the resolved spec), the pipeline's ServiceAccount and RBAC, and a RayJob."""

from __future__ import annotations

from typing import Any

import yaml

from kubedistill.api import DistillationJob
from kubedistill.api.distillationjob import RayNodeGroup
from kubedistill.env import PipelineEnv
from kubedistill.uris import parse_uri, pvc_claim
from kubedistill_operator import naming
from kubedistill_operator.builders import common
from kubedistill_operator.config import OperatorConfig

KIND = "DistillationJob"
SPEC_DIR = "/etc/kubedistill"
SPEC_KEY = "distillationjob.yaml"
ENTRYPOINT = f"python -m kubedistill_jobs.entrypoint {SPEC_DIR}/{SPEC_KEY}"


def resolved_job(job: DistillationJob, config: OperatorConfig) -> DistillationJob:
    """The job as the pipeline runs it: defaults filled, the image resolved, server-side metadata dropped."""
    meta = job.metadata
    resolved = job.model_copy(deep=True)
    resolved.metadata = type(meta)(name=meta.name, namespace=meta.namespace, labels=meta.labels,
                                   uid=meta.uid, generation=meta.generation)
    resolved.status = None
    resolved.spec.ray.image = job.spec.ray.image or config.job_image
    return resolved


def spec_config_map(job: DistillationJob, config: OperatorConfig) -> dict[str, Any]:
    name = job.metadata.name
    wire = resolved_job(job, config).to_wire()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, naming.spec_config_map_name(name)),
        "data": {SPEC_KEY: yaml.safe_dump(wire, sort_keys=False)},
    }


def pipeline_service_account(job: DistillationJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(job, naming.pipeline_account_name(job.metadata.name)),
        "automountServiceAccountToken": True,
    }


def pipeline_role(job: DistillationJob) -> dict[str, Any]:
    """The pipeline may patch the status of its own job (all it does with the API), and nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(job, naming.pipeline_account_name(job.metadata.name)),
        "rules": [
            {
                "apiGroups": ["kubedistill.io"],
                "resources": ["distillationjobs/status"],
                "resourceNames": [job.metadata.name],
                "verbs": ["patch"],
            }
        ],
    }


def pipeline_role_binding(job: DistillationJob) -> dict[str, Any]:
    name = naming.pipeline_account_name(job.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(job, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.metadata.namespace or "default"}],
    }


def ray_job(job: DistillationJob, config: OperatorConfig, name: str | None = None) -> dict[str, Any]:
    """The KubeRay RayJob that runs the pipeline; `name` defaults to this generation's run name."""
    spec = job.spec
    ray = spec.ray
    run_name = name or naming.ray_job_name(job.metadata.name, job.metadata.generation)
    volumes, mounts = _volumes(job)
    head = _pod_template(job, config, "ray-head", ray.head, 0, volumes, mounts, run_name)
    worker = _pod_template(job, config, "ray-worker", ray.workers, ray.workers.gpus, volumes, mounts, run_name)
    body: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(job, run_name),
        "spec": {
            "entrypoint": ENTRYPOINT,
            "submissionMode": "K8sJobMode",
            # Kueue admits only RayJobs that shut their cluster down; it also frees GPUs at once.
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ray.ttl_seconds_after_finished,
            "backoffLimit": ray.backoff_limit,
            "rayClusterSpec": {
                "rayVersion": ray.ray_version,
                "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0"}, "template": head},
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": ray.workers.replicas,
                        "minReplicas": ray.workers.replicas,
                        "maxReplicas": ray.workers.replicas,
                        "rayStartParams": {},
                        "template": worker,
                    }
                ],
            },
        },
    }
    if ray.active_deadline_seconds is not None:
        body["spec"]["activeDeadlineSeconds"] = ray.active_deadline_seconds
    return body


def build_job_children(job: DistillationJob, config: OperatorConfig,
                       ray_job_name: str | None = None) -> list[dict[str, Any]]:
    """Everything the operator creates for a job, in creation order (the RayJob last: it uses the rest)."""
    return [
        spec_config_map(job, config),
        pipeline_service_account(job),
        pipeline_role(job),
        pipeline_role_binding(job),
        ray_job(job, config, ray_job_name),
    ]


def _meta(job: DistillationJob, name: str) -> dict[str, Any]:
    return common.metadata(name, job.metadata.namespace, job.metadata.name, naming.PIPELINE, KIND, job.metadata.uid)


def claim_fields(job: DistillationJob) -> list[tuple[str, str]]:
    """(spec field, claim) for every pvc:// URI the job's pods mount: teacher, student, dataset and output."""
    spec = job.spec
    teachers = tuple((f"spec.{field}.uri", teacher.uri) for field, teacher in spec.all_teachers())
    uris = (*teachers, ("spec.student.uri", spec.student.uri), ("spec.dataset.uri", spec.dataset.uri),
            ("spec.output.uri", spec.output.uri))
    return [(field, claim) for field, uri in uris if uri and (claim := pvc_claim(uri))]


def _claims(job: DistillationJob) -> dict[str, bool]:
    """Claim → read-only, for every pvc:// URI the job reads or writes (the output's claim is writable)."""
    claims: dict[str, bool] = {}
    for field, claim in claim_fields(job):
        writable = field == "spec.output.uri"
        claims[claim] = claims.get(claim, True) and not writable
    return claims


def _volumes(job: DistillationJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": naming.spec_config_map_name(job.metadata.name)}},
        # Ray's object store and worker processes need a writable /tmp and a real /dev/shm.
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for index, (claim, read_only) in enumerate(sorted(_claims(job).items())):
        volume, mount = common.pvc_volume(claim, read_only, index)
        volumes.append(volume)
        mounts.append(mount)
    return volumes, mounts


def _env(job: DistillationJob, run_name: str) -> list[dict[str, Any]]:
    pipeline = PipelineEnv(job_name=job.metadata.name, job_namespace=job.metadata.namespace or "default",
                           run_id=run_name)
    env: list[dict[str, Any]] = [*common.env_list(pipeline.to_env())]
    for _, teacher in job.spec.all_teachers():  # one at most has a key (the API refuses more)
        endpoint = teacher.endpoint
        if endpoint and endpoint.api_key_secret_ref:
            ref = endpoint.api_key_secret_ref
            env.append({"name": PipelineEnv.env_name("teacher_api_key"),
                        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _env_from(job: DistillationJob) -> list[dict[str, Any]]:
    output = job.spec.output
    if parse_uri(output.uri).scheme == "s3" and output.s3_credentials_secret:
        return [{"secretRef": {"name": output.s3_credentials_secret}}]
    return []


def _pod_template(job: DistillationJob, config: OperatorConfig, container_name: str, group: RayNodeGroup,
                  gpus: int, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]],
                  run_name: str) -> dict[str, Any]:
    ray = job.spec.ray
    container: dict[str, Any] = {
        "name": container_name,
        "image": ray.image or config.job_image,
        "env": _env(job, run_name),
        "volumeMounts": mounts,
        # Ray writes its session files under the home directory as well as /tmp.
        "securityContext": common.container_security_context(read_only_root=False),
    }
    env_from = _env_from(job)
    if env_from:
        container["envFrom"] = env_from
    resources = common.resources(group.resources, gpus)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "serviceAccountName": ray.service_account_name or naming.pipeline_account_name(job.metadata.name),
        "securityContext": common.pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = common.image_pull_secrets(config.image_pull_secrets)
    if ray.node_selector:
        pod["nodeSelector"] = dict(ray.node_selector)
    if ray.tolerations:
        pod["tolerations"] = [t.to_wire() for t in ray.tolerations]
    return {"metadata": {"labels": naming.labels(job.metadata.name, naming.PIPELINE)}, "spec": pod}
