"""A python-backend copy of a model repository, for the local tritonserver.

The repository a job exports keeps ONNX models on Triton's `onnxruntime` backend (what the cluster
runs). The wheel's tritonserver has only the python backend, so locally each ONNX model is served by
a python-backend `model.py` that runs the same file with onnxruntime: same model names, tensor names,
shapes, batching. Everything else (serving.json, tokenizers, labels) is copied as is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubedistill.artifacts import HF_WEIGHTS_FOLDER
from kubedistill_router.triton_settings import read_config

ONNX_PLATFORM = "onnxruntime_onnx"
WRAPPER = Path(__file__).with_name("onnx_model.py")


def is_onnx(config: model_config_pb2.ModelConfig) -> bool:
    return config.platform == ONNX_PLATFORM or config.backend == "onnxruntime"


def python_backend_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """The same model on the python backend: tensors and batching kept, ONNX-only settings dropped."""
    local = model_config_pb2.ModelConfig()
    local.CopyFrom(config)
    local.platform = ""
    local.backend = "python"
    local.ClearField("optimization")  # ONNX Runtime execution accelerators
    local.ClearField("default_model_filename")
    for group in local.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
    return local


def build_local_repository(source: Path, dest: Path) -> Path:
    """Copy `source` into `dest` (replaced), wrapping each ONNX model in the python backend."""
    if dest.exists():
        shutil.rmtree(dest)

    def vllm_weights(folder: str, names: list[str]) -> set[str]:
        # A generation model's float16 safetensors are for the vLLM backend in a cluster: not copied here.
        return {HF_WEIGHTS_FOLDER} & set(names) if Path(folder).parent == Path(source) else set()

    shutil.copytree(source, dest, symlinks=False, ignore=vllm_weights)
    for config_path in sorted(dest.glob("*/config.pbtxt")):
        config = read_config(config_path)
        if not is_onnx(config):
            continue
        filename = config.default_model_filename or "model.onnx"
        versions = [d for d in config_path.parent.iterdir() if d.is_dir() and d.name.isdigit()]
        for version in versions:
            if (version / filename).exists():
                if filename != "model.onnx":
                    (version / filename).rename(version / "model.onnx")
                shutil.copy2(WRAPPER, version / "model.py")
        config_path.write_text(text_format.MessageToString(python_backend_config(config)))
    return dest
