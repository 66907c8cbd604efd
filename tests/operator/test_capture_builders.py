"""router.capture in the objects the operator writes: the claim mounted read-write for the router only, the
s3 credentials by reference, the config passed through; every object schema-valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubedistill_operator.builders import ModelSourceInfo, build_student_children
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.reconcile.references import student_references
from kubedistill_validation import validate_object

from kubedistill.api import ManifestError, StudentDeployment, parse_resource
from kubedistill.routerconfig import RouterConfig
from kubedistill.uris import local_path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig(job_image="registry.example/jobs:1", router_image="registry.example/router:1")
SOURCE = ModelSourceInfo("pvc://models/jobs/bbc/model_repository", "bbc-news-topics-g3", 0.82)


def student(capture: dict[str, Any] | None) -> StudentDeployment:
    doc = yaml.safe_load((ROOT / "examples/quickstart/studentdeployment.yaml").read_text())
    doc["metadata"].update({"namespace": "ml", "uid": "0f5b8e3c-8d1e-4c52-9a38-2f6a7d2b1c11", "generation": 1})
    doc["spec"].setdefault("router", {})["capture"] = capture
    if capture is None:
        del doc["spec"]["router"]["capture"]
    parsed = parse_resource(doc)
    assert isinstance(parsed, StudentDeployment)
    return parsed


def pod_of(sd: StudentDeployment) -> dict[str, Any]:
    objects = {o["kind"]: o for o in build_student_children(sd, SOURCE, CONFIG)}
    return objects["Deployment"]["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name)


@pytest.mark.parametrize("uri", ["pvc://traffic/news", "pvc://models/capture/news", "s3://bucket/capture",
                                 "file:///var/capture"])
def test_capture_objects_validate_and_carry_the_config(uri):
    credentials = {"s3CredentialsSecret": "s3-creds"} if uri.startswith("s3://") else {}
    sd = student({"uri": uri, "redact": [r"\b\d{4}-\d{4}\b"], **credentials})
    children = build_student_children(sd, SOURCE, CONFIG)
    for obj in children:
        validate_object(obj)
    config_map = next(o for o in children if o["kind"] == "ConfigMap")
    config = RouterConfig.model_validate(yaml.safe_load(config_map["data"]["router.yaml"]))
    assert config.capture is not None and config.capture.uri == uri
    assert config.capture.redact == [r"\b\d{4}-\d{4}\b"]


def test_the_capture_claim_is_mounted_writable_for_the_router_where_the_uri_resolves():
    pod = pod_of(student({"uri": "pvc://traffic/news"}))
    router = container(pod, "router")
    (mount,) = [m for m in router["volumeMounts"] if m["mountPath"] == "/mnt/pvc/traffic"]
    assert mount["readOnly"] is False
    assert str(local_path("pvc://traffic/news")).startswith(mount["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "traffic", "readOnly": False}
    # Triton and the fetch step do not get it.
    assert all(m["name"] != mount["name"] for m in container(pod, "tritonserver")["volumeMounts"])
    assert all(m["name"] != mount["name"] for m in container(pod, "fetch-model")["volumeMounts"])


def test_the_model_claim_reused_for_capture_is_one_volume_read_only_for_the_fetch_step():
    pod = pod_of(student({"uri": "pvc://models/capture"}))
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert len(claims) == 1 and claims[0]["persistentVolumeClaim"]["readOnly"] is False
    fetch = [m for m in container(pod, "fetch-model")["volumeMounts"] if m["name"] == claims[0]["name"]]
    router = [m for m in container(pod, "router")["volumeMounts"] if m["name"] == claims[0]["name"]]
    assert fetch[0]["readOnly"] is True and router[0]["readOnly"] is False


def test_s3_capture_gets_its_credentials_by_reference_and_they_are_checked_for():
    sd = student({"uri": "s3://bucket/capture", "s3CredentialsSecret": "s3-creds"})
    router = container(pod_of(sd), "router")
    assert router["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    refs = {(r.kind, r.name): r.field for r in student_references(sd, SOURCE)}
    assert any(name == "s3-creds" and "capture" in field for (_, name), field in refs.items())


def test_without_capture_the_router_has_no_capture_mount():
    pod = pod_of(student(None))
    assert all("/mnt/pvc" not in m["mountPath"] for m in container(pod, "router")["volumeMounts"])
    assert "capture" not in build_student_children(student(None), SOURCE, CONFIG)[0]["data"]["router.yaml"]


@pytest.mark.parametrize(("capture", "field", "says"), [
    ({"uri": "http://bucket/capture"}, "router.capture.uri", "file:///abs (an absolute path), pvc://"),
    ({"uri": "gs://bucket/capture"}, "router.capture.uri", "s3://"),
    ({"uri": "file:///c", "redact": ["ok", "(unclosed"]}, "router.capture.redact[1]", "not a valid regular"),
    ({"uri": "file:///c", "shadowDisagreementRate": 1.5}, "router.capture.shadowDisagreementRate", "1"),
    ({"uri": "file:///c", "maxFileBytes": 10}, "router.capture.maxFileBytes", "1024"),
    ({"uri": "file://relative/c"}, "router.capture.uri", "absolute"),
    ({"uri": "pvc://traffic"}, "router.capture.uri", "pvc://<claim>/<path>"),
    ({"uri": "file:///c", "maxFileBytes": 2_000_000, "maxTotalBytes": 1_048_576}, "router.capture.maxFileBytes",
     "maxTotalBytes"),
    ({"uri": "file:///c", "s3CredentialsSecret": "creds"}, "router.capture.s3CredentialsSecret", "s3://"),
    ({"uri": "file:///c", "escalated": False, "shadowDisagreementRate": 0}, "router.capture.escalated",
     "nothing"),
])
def test_bad_capture_settings_are_refused_naming_the_field(capture, field, says):
    with pytest.raises(ManifestError) as error:
        student(capture)
    message = str(error.value)
    assert field in message and says in message


# dataset.capture on a DistillationJob.

def job_with(capture: dict[str, Any]):
    from kubedistill.api import DistillationJob

    doc = yaml.safe_load((ROOT / "examples/quickstart/distillationjob.yaml").read_text())
    doc["metadata"].update({"namespace": "ml", "uid": "1f5b8e3c-8d1e-4c52-9a38-2f6a7d2b1c11", "generation": 1})
    doc["spec"]["dataset"]["capture"] = capture
    doc["spec"]["output"]["uri"] = "pvc://models/jobs/news-v2"
    parsed = parse_resource(doc)
    assert isinstance(parsed, DistillationJob)
    return parsed


def test_a_deployment_reference_resolves_to_its_capture_uri_in_the_spec_the_pipeline_reads():
    from kubedistill_operator.builders import build_job_children
    from kubedistill_operator.kubeapi import STUDENT_DEPLOYMENTS
    from kubedistill_operator.reconcile.job import resolve_capture

    deployments = {("ml", "news"): {"spec": {"router": {"capture": {"uri": "pvc://traffic/news"}}}},
                   ("ml", "quiet"): {"spec": {"router": {}}}}

    def get(resource, namespace, name):
        assert resource is STUDENT_DEPLOYMENTS
        return deployments.get((namespace, name))

    job = job_with({"studentDeploymentRef": {"name": "news"}, "ratio": 0.3})
    resolved = resolve_capture(get, "ml", job)
    assert not isinstance(resolved, str)
    children = build_job_children(resolved, CONFIG, "news-v2-g1")
    for obj in children:
        validate_object(obj)
    config_map = next(o for o in children if o["kind"] == "ConfigMap")
    (text,) = config_map["data"].values()
    capture = yaml.safe_load(text)["spec"]["dataset"]["capture"]
    assert capture == {"uri": "pvc://traffic/news", "ratio": 0.3, "evalFraction": 0.3, "minGain": 0.0}
    ray_job = next(o for o in children if o["kind"] == "RayJob")
    head = ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in head["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"traffic": True, "models": False}  # the capture is read, the output written

    missing = resolve_capture(get, "ml", job_with({"studentDeploymentRef": {"name": "gone"}, "ratio": 0.3}))
    assert isinstance(missing, str) and missing.startswith("spec.dataset.capture.studentDeploymentRef: ")
    quiet = resolve_capture(get, "ml", job_with({"studentDeploymentRef": {"name": "quiet"}, "ratio": 0.3}))
    assert isinstance(quiet, str) and "no spec.router.capture" in quiet
    direct = job_with({"uri": "s3://bucket/capture", "ratio": 0.3})
    assert resolve_capture(get, "ml", direct) is direct


def test_a_job_that_gains_too_little_on_captured_traffic_is_not_served_and_says_why():
    from kubedistill_operator.status.student import resolve_job_source

    def job(gain: float, passed: bool) -> dict[str, Any]:
        results = {"gatePassed": passed, "retention": 0.97, "captureGain": gain, "modelVersion": "news-v2-run",
                   "artifactUri": "pvc://m/news-v2/model_repository"}
        return {"metadata": {"name": "news-v2", "generation": 1},
                "spec": {"evaluation": {"gate": {"minRetention": 0.95}},
                         "dataset": {"capture": {"uri": "pvc://traffic/news", "ratio": 0.3, "minGain": 0.01}}},
                "status": {"phase": "Failed" if not passed else "Succeeded", "results": results,
                           "observedGeneration": 1}}

    waiting = resolve_job_source("news", job(-0.02, False), 0.8, None)
    assert waiting.reason == "GateNotMet"
    assert "captured traffic gains -0.0200" in waiting.message and "dataset.capture.minGain 0.01" in waiting.message
    served = resolve_job_source("news", job(0.05, True), 0.8, None)
    assert isinstance(served, ModelSourceInfo) and served.model_version == "news-v2-run"
