"""`triton.backend: vllm`: the objects validate against the real schemas, the rendered config.pbtxt parses with
Triton's own protobuf and declares the vLLM backend's tensors as the backend does, model.json holds only
vLLM engine-argument names, GPUs follow the spec, and a classification job is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from kubedistill_operator.builders import ModelSourceInfo, build_student_children
from kubedistill_operator.builders.vllm import engine_args, model_config
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.status.student import resolve_job_source
from kubedistill_validation import validate_object
from tritonclient.grpc import model_config_pb2

from kubedistill.api import StudentDeployment, parse_resource
from kubedistill.api.studentdeployment import TRITON_VLLM_IMAGE
from kubedistill.artifacts import VLLM_INPUTS, VLLM_OUTPUTS
from kubedistill.env import TritonEnv
from kubedistill.routerconfig import VLLM_CONFIG_FILE, vllm_engine_args_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig(job_image="registry.example/jobs:1", router_image="registry.example/router:1",
                        triton_image="mirror/triton:24.10-py3")
SOURCE = ModelSourceInfo("pvc://models/jobs/chat/model_repository", "smollm2-chat-g1", 0.4)
# EngineArgs fields of vLLM (vllm/engine/arg_utils.py, `class EngineArgs`), the ones model.json may use: each
# is a dataclass field there in vLLM 0.6 through the 0.1x releases the Triton vLLM images ship.
ENGINE_ARGS = {"model", "tokenizer", "dtype", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
               "max_num_seqs", "max_logprobs", "disable_log_stats"}
# triton-inference-server/vllm_backend src/model.py, `_auto_complete_inputs_and_outputs`: name → (type, dims).
BACKEND_TENSORS = {
    "text_input": ("TYPE_STRING", [1]), "stream": ("TYPE_BOOL", [1]), "sampling_parameters": ("TYPE_STRING", [1]),
    "exclude_input_in_output": ("TYPE_BOOL", [1]), "return_finish_reason": ("TYPE_BOOL", [1]),
    "return_logprobs": ("TYPE_BOOL", [1]), "return_num_input_tokens": ("TYPE_BOOL", [1]),
    "return_num_output_tokens": ("TYPE_BOOL", [1]), "text_output": ("TYPE_STRING", [-1]),
    "finish_reason": ("TYPE_STRING", [-1]), "logprobs": ("TYPE_STRING", [-1]),
    "num_input_tokens": ("TYPE_UINT32", [1]), "num_output_tokens": ("TYPE_UINT32", [-1]),
}


def student(triton: dict[str, Any], router: dict[str, Any] | None = None) -> StudentDeployment:
    doc = yaml.safe_load((ROOT / "examples/quickstart/studentdeployment.yaml").read_text())
    doc["metadata"].update({"namespace": "ml", "uid": "0f5b8e3c-8d1e-4c52-9a38-2f6a7d2b1c11", "generation": 1})
    doc["spec"]["triton"] = triton
    doc["spec"]["router"] = {**doc["spec"].get("router", {}), **(router or {})}
    parsed = parse_resource(doc)
    assert isinstance(parsed, StudentDeployment)
    return parsed


VLLM = {"backend": "vllm", "gpus": 2, "vllm": {"maxModelLen": 4096, "gpuMemoryUtilization": 0.8},
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}}


def children(sd: StudentDeployment) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in build_student_children(sd, SOURCE, CONFIG)}


def test_vllm_deployment_validates_and_asks_for_the_specs_gpus():
    objects = children(student(VLLM))
    for obj in objects.values():
        validate_object(obj)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (fetch,), (triton, _router) = pod["initContainers"], pod["containers"]
    assert triton["image"] == TRITON_VLLM_IMAGE  # the operator's override is for the ONNX Runtime image
    assert triton["resources"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
                                   "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    env = {e["name"]: e["value"] for e in triton["env"]}
    assert env["HOME"] == "/tmp" and env["HF_HUB_OFFLINE"] == "1"  # read-only root, local weights
    assert TritonEnv.from_env({e["name"]: e["value"] for e in fetch["env"]}).backend == "vllm"
    assert {"name": "router-config", "mountPath": "/etc/kubedistill", "readOnly": True} in fetch["volumeMounts"]
    data = objects["ConfigMap"]["data"]
    assert set(data) == {"router.yaml", VLLM_CONFIG_FILE, vllm_engine_args_file("student"),
                         vllm_engine_args_file("teacher")}
    plain = children(student({"gpus": 1}))
    assert set(plain["ConfigMap"]["data"]) == {"router.yaml"}
    plain_pod = plain["Deployment"]["spec"]["template"]["spec"]
    assert plain_pod["containers"][0]["image"] == "mirror/triton:24.10-py3" and "env" not in plain_pod["containers"][0]
    own = children(student({**VLLM, "image": "registry.example/triton:25.10-vllm"}))
    assert own["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example/triton:25.10-vllm"


def test_new_engine_arguments_roll_the_pods():
    def annotations(triton: dict[str, Any]) -> dict[str, str]:
        return children(student(triton))["Deployment"]["spec"]["template"]["metadata"]["annotations"]

    assert annotations(VLLM) == annotations(VLLM)
    assert annotations(VLLM) != annotations({**VLLM, "vllm": {"maxModelLen": 2048}})


def test_config_parses_with_tritons_protobuf_and_declares_the_backends_tensors():
    config = text_format.Parse(model_config(), model_config_pb2.ModelConfig())
    assert config.backend == "vllm" and config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_MODEL]
    assert not config.name  # Triton takes the folder's: one text for the student and the teacher
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims))
                for t in [*config.input, *config.output]}
    assert [t.name for t in config.input] == list(VLLM_INPUTS)
    assert [t.name for t in config.output] == list(VLLM_OUTPUTS)
    assert declared == {name: BACKEND_TENSORS[name] for name in declared}
    assert [t.name for t in config.input if not t.optional] == ["text_input"]


def test_engine_arguments_are_vllm_names_and_share_the_memory():
    sd = student(VLLM)
    files = children(sd)["ConfigMap"]["data"]
    args = {m: json.loads(files[vllm_engine_args_file(m)]) for m in ("student", "teacher")}
    for model, values in args.items():
        assert set(values) <= ENGINE_ARGS, set(values) - ENGINE_ARGS
        assert values["model"] == values["tokenizer"] == f"/models/{model}/hf"
        assert values["tensor_parallel_size"] == 2 and values["max_model_len"] == 4096
    assert args["student"]["gpu_memory_utilization"] + args["teacher"]["gpu_memory_utilization"] == \
        pytest.approx(0.8)
    assert args["teacher"]["gpu_memory_utilization"] > args["student"]["gpu_memory_utilization"]
    alone = student(VLLM, {"mode": "student-only"})
    assert engine_args(alone, "student")["gpu_memory_utilization"] == 0.8
    remote = children(student(VLLM, {"teacher": {"url": "https://teacher.example/v1", "protocol": "openai"}}))
    assert vllm_engine_args_file("teacher") not in remote["ConfigMap"]["data"]  # the router never calls it


def test_a_classification_job_is_refused_for_vllm():
    job = {"metadata": {"name": "bbc"}, "spec": {"task": {"type": "sequence-classification"}},
           "status": {"phase": "Succeeded"}}
    refused = resolve_job_source("sd", job, 0.5, None, backend="vllm")
    assert not isinstance(refused, ModelSourceInfo)
    assert refused.reason == "UnsupportedBackend" and refused.refused and "triton.backend" in refused.message
    causal = {**job, "spec": {"task": {"type": "causal-lm"}}}
    served = resolve_job_source("sd", causal, 0.5, None, backend="vllm")
    assert isinstance(served, ModelSourceInfo) or served.reason != "UnsupportedBackend"
