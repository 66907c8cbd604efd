"""`triton.backend: vllm`: the Triton vLLM-backend model of a causal-LM student (and its colocated teacher).

Pure builders: the model's config.pbtxt (backend "vllm", decoupled, the tensors the router uses) and each
model's `model.json` (vLLM's AsyncEngineArgs, by their names in vllm/engine/arg_utils.py). They travel in the
router's ConfigMap; the fetch init container writes them into the fetched repository
(kubedistill_router.vllm_repository).
"""

from __future__ import annotations

import json
from typing import Any

from kubedistill.api import StudentDeployment
from kubedistill.artifacts import (
    HF_WEIGHTS_FOLDER,
    STUDENT_MODEL,
    TEACHER_MODEL,
    VLLM_INPUTS,
    VLLM_OUTPUTS,
    decoupled_model_config,
)
from kubedistill.routerconfig import MODEL_REPOSITORY_DIR, VLLM_CONFIG_FILE, vllm_engine_args_file

# Each tensor as triton-inference-server/vllm_backend declares it in `auto_complete_config`: (type, dims,
# optional). Declared here too, so the repository's contract check sees what the router sends and reads.
_TENSORS: dict[str, tuple[str, str, bool]] = {
    "text_input": ("TYPE_STRING", "1", False),
    "stream": ("TYPE_BOOL", "1", True),
    "sampling_parameters": ("TYPE_STRING", "1", True),
    "exclude_input_in_output": ("TYPE_BOOL", "1", True),
    "return_finish_reason": ("TYPE_BOOL", "1", True),
    "return_logprobs": ("TYPE_BOOL", "1", True),
    "return_num_input_tokens": ("TYPE_BOOL", "1", True),
    "return_num_output_tokens": ("TYPE_BOOL", "1", True),
    "text_output": ("TYPE_STRING", "-1", False),
    "finish_reason": ("TYPE_STRING", "-1", False),
    "logprobs": ("TYPE_STRING", "-1", False),
    "num_input_tokens": ("TYPE_UINT32", "1", False),
    "num_output_tokens": ("TYPE_UINT32", "-1", False),
}
# The most top log-probabilities a request may ask for (the router's own cap, openai_api.MAX_TOP_LOGPROBS).
MAX_LOGPROBS = 20
# A colocated teacher is the bigger model: it gets this share of triton.vllm.gpuMemoryUtilization.
TEACHER_MEMORY_SHARE = 0.75


def model_config() -> str:
    """config.pbtxt of a vLLM model (no `name`: Triton takes the folder's, so one text serves both models).

    KIND_MODEL: vLLM places the model on the GPUs itself (tensor parallel over all the pod's GPUs)."""
    return decoupled_model_config("vllm", _TENSORS, VLLM_INPUTS, VLLM_OUTPUTS, "KIND_MODEL")


def serves_colocated_teacher(sd: StudentDeployment) -> bool:
    """Whether the router may call a teacher inside Triton (a mode that uses a teacher, and no remote one)."""
    router = sd.spec.router
    return router.mode != "student-only" and router.teacher is None


def engine_args(sd: StudentDeployment, model: str) -> dict[str, Any]:
    """model.json of `model` (student or teacher): vLLM engine arguments, the weights at the path the fetch
    step leaves them (<repository>/<model>/hf/, as the pods mount the repository)."""
    spec = sd.spec.triton
    utilization = spec.vllm.gpu_memory_utilization
    if serves_colocated_teacher(sd):
        share = TEACHER_MEMORY_SHARE if model == TEACHER_MODEL else 1 - TEACHER_MEMORY_SHARE
        utilization = round(utilization * share, 4)
    weights = f"{MODEL_REPOSITORY_DIR}/{model}/{HF_WEIGHTS_FOLDER}"
    args: dict[str, Any] = {
        "model": weights,
        "tokenizer": weights,
        "dtype": spec.vllm.dtype,
        "tensor_parallel_size": spec.gpus,
        "gpu_memory_utilization": utilization,
        "max_logprobs": MAX_LOGPROBS,
        "disable_log_stats": False,
    }
    if spec.vllm.max_model_len is not None:
        args["max_model_len"] = spec.vllm.max_model_len
    if spec.vllm.max_num_seqs is not None:
        args["max_num_seqs"] = spec.vllm.max_num_seqs
    return args


def config_map_data(sd: StudentDeployment) -> dict[str, str]:
    """The files the fetch step needs, as ConfigMap data: the config.pbtxt and a model.json per model served."""
    models = [STUDENT_MODEL, *([TEACHER_MODEL] if serves_colocated_teacher(sd) else [])]
    data = {VLLM_CONFIG_FILE: model_config()}
    for model in models:
        data[vllm_engine_args_file(model)] = json.dumps(engine_args(sd, model), indent=2, sort_keys=True) + "\n"
    return data
