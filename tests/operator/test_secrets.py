"""Keys in Secrets stay in Secrets: with the real operator against kmock's emulator, keys are planted in the
Secrets a job and a deployment name (endpoint teacher, router teacher, the router's own token), and searched for,
plain and base64, in every other object of the emulated cluster (children, status, Events, ConfigMaps), in
everything the operator logged and in what `kubedistill manifests` prints."""

from __future__ import annotations

import base64
import copy
import json
import logging

import pytest
import yaml
from kubedistill_harness import NS, RESOURCES, TIMEOUT, example, status, volume_claim
from kubedistill_operator.kubeapi import DEPLOYMENTS, DISTILLATION_JOBS, RAY_JOBS, Resource

pytestmark = pytest.mark.slow  # runs the real operator for seconds

KEYS = {"teacher-endpoint": "sk-endpoint-planted-5a0e71c3", "router-teacher": "sk-router-teacher-planted-93be04d2",
        "router-token": "router-token-planted-7c2f19aa"}


def forms(key: str) -> list[str]:
    """The key as it may show up: plain, and base64 as in a Secret's `data`."""
    return [key, base64.b64encode(key.encode()).decode()]


def secret(name: str, key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {"api-key": base64.b64encode(key.encode()).decode()}}


def manifests(tmp_path) -> tuple[dict, dict]:
    job = copy.deepcopy(example("causal-lm/distillationjob.yaml"))
    job["metadata"]["name"] = "chat"
    job["spec"]["teacher"] = {"endpoint": {"url": "https://llm.example/v1", "model": "big",
                                           "apiKeySecretRef": {"name": "teacher-endpoint", "key": "api-key"}}}
    job["spec"]["student"] = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
    job["spec"]["distillation"]["topK"] = 20  # what an endpoint exposes at most
    job["spec"]["output"] = {"uri": "pvc://models/chat"}
    sd = copy.deepcopy(example("quickstart/studentdeployment.yaml"))
    sd["metadata"]["name"] = "news"
    sd["spec"]["source"] = {"modelRepositoryUri": "pvc://models/news/model_repository"}
    sd["spec"]["router"]["teacher"] = {"url": "https://classifier.example", "protocol": "kserve-v1",
                                       "apiKeySecretRef": {"name": "router-teacher", "key": "api-key"}}
    sd["spec"]["router"]["auth"] = {"apiKeySecretRef": {"name": "router-token", "key": "api-key"}}
    for i, manifest in enumerate((job, sd)):
        (tmp_path / f"{i}.yaml").write_text(yaml.safe_dump(manifest))
    return job, sd


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_planted_keys_appear_nowhere_but_in_their_secrets(cluster, tmp_path, capsys):
    from kubedistill.cli import main

    log = Everything()
    log.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(log)
    root.setLevel(logging.DEBUG)
    try:
        job, sd = manifests(tmp_path)
        for name, key in KEYS.items():
            cluster.create(secret(name, key))
        cluster.create(volume_claim("models"))
        cluster.create(job)
        cluster.create(sd)
        ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, "chat-g1"), TIMEOUT, "the RayJob")
        deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, "news"), TIMEOUT, "the Deployment")
        cluster.patch_status(RAY_JOBS, NS, "chat-g1", {"jobDeploymentStatus": "Failed", "reason": "AppFailed",
                                                       "message": "the entrypoint exited with 1"})
        cluster.wait_for(lambda: status(cluster, DISTILLATION_JOBS, "chat").get("phase") == "Failed", TIMEOUT,
                         "the job failed")
    finally:
        root.removeHandler(log)
        root.setLevel(previous)

    # The keys reach the pods only by reference.
    head = ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "KUBEDISTILL_TEACHER_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "teacher-endpoint", "key": "api-key"}}} in head["env"]
    router = deployment["spec"]["template"]["spec"]["containers"][1]
    assert router["env"] == [{"name": "KUBEDISTILL_ROUTER_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "router-token", "key": "api-key"}}}]

    assert main(["manifests", str(tmp_path / "0.yaml"), str(tmp_path / "1.yaml")]) == 0
    printed = capsys.readouterr()
    assert "RayJob" in printed.out and "Deployment" in printed.out

    stored = []
    for key, info in RESOURCES.items():
        group_version, plural = key.rsplit("/", 1)
        group, _, version = group_version.rpartition("/")
        if plural == "secrets" or not info.namespaced:  # kmock 0.8 cannot list namespaces; nothing else is there
            continue
        for obj in cluster.list(Resource(group, version, plural), NS):
            stored.append((f"{plural}/{obj['metadata'].get('name')}", json.dumps(obj)))
    assert any(name.startswith("events/") for name, _ in stored)
    assert any(name == "configmaps/news-router" for name, _ in stored)
    places = [*stored, ("operator log", "\n".join(log.lines)), ("manifests", printed.out + printed.err)]
    assert len(log.lines) > 10  # the operator did log
    for name, key in KEYS.items():
        for form in forms(key):
            leaks = [where for where, text in places if form in text]
            assert leaks == [], f"{name} leaked into {leaks}"
