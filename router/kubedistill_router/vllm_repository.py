"""`triton.backend: vllm`, in the fetch init container: the generation models of a fetched repository become
Triton vLLM-backend models, from the files the operator rendered into the router's ConfigMap
(kubedistill_operator.builders.vllm).

For each generation model with a model.json there: config.pbtxt ← the rendered one, `1/` ← model.json only (the
ONNX Runtime GenAI build is dropped: the vLLM image cannot run it), serving.json's entry ← kind "vllm" and
the vLLM tensors. A generation model without a model.json (a colocated teacher the router never calls) is
removed, so Triton does not try to load it. Errors name the file and the fix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kubedistill.artifacts import (
    HF_WEIGHTS_DTYPE,
    HF_WEIGHTS_FOLDER,
    VLLM_ENGINE_ARGS_FILE,
    VLLM_INPUTS,
    VLLM_OUTPUTS,
    ServedModel,
    ServingManifest,
)
from kubedistill.routerconfig import VLLM_CONFIG_FILE, vllm_engine_args_file


class VllmRepositoryError(ValueError):
    """The repository or the rendered files cannot make a vLLM model."""


def to_vllm(repository: Path, manifest: ServingManifest, files: Path, served_at: Path) -> ServingManifest:
    """Rewrite `repository` (a staging copy) for the vLLM backend; returns the new manifest (also written).

    `files`: the folder with VLLM_CONFIG_FILE and the models' engine arguments (the mounted ConfigMap);
    `served_at`: where Triton will see the repository, which each model.json's `model` must point into."""
    if manifest.task != "causal-lm":
        raise VllmRepositoryError(f"triton.backend vllm serves causal-lm students; this repository is a "
                                  f"{manifest.task} export: use triton.backend auto")
    config_file = files / VLLM_CONFIG_FILE
    if not config_file.is_file():
        raise VllmRepositoryError(f"{config_file} is missing: the operator renders it into the router's ConfigMap "
                                  "for triton.backend vllm (is the ConfigMap mounted there?)")
    config_text = config_file.read_text()
    student = _convert(repository, manifest.student, config_text, files, served_at)
    if student is None:
        raise VllmRepositoryError(f"{files / vllm_engine_args_file(manifest.student.name)} is missing: the student "
                                  "needs its engine arguments")
    teacher = None
    if manifest.teacher is not None:
        teacher = _convert(repository, manifest.teacher, config_text, files, served_at)
    out = manifest.model_copy(update={"student": student, "teacher": teacher,
                                      "teacher_tokenizer": manifest.teacher_tokenizer if teacher else None})
    out.write(repository)
    return out


def _convert(repository: Path, model: ServedModel, config_text: str, files: Path,
             served_at: Path) -> ServedModel | None:
    folder = repository / model.name
    if model.kind != "generation":
        raise VllmRepositoryError(f"{folder}: a {model.kind} model cannot run on the vLLM backend")
    weights = folder / HF_WEIGHTS_FOLDER
    if model.weights is None or not (weights / "config.json").is_file() or not any(weights.glob("*.safetensors")):
        raise VllmRepositoryError(f"{weights}: no safetensors and config.json for vLLM; the job exported this "
                                  "model before the vLLM weights were part of the export: export it again")
    args_file = files / vllm_engine_args_file(model.name)
    if not args_file.is_file():
        shutil.rmtree(folder)  # not called by the router: Triton must not try to load it
        return None
    try:
        args = json.loads(args_file.read_text())
    except ValueError as error:
        raise VllmRepositoryError(f"{args_file}: not JSON ({error})") from None
    expected = str(served_at / model.weights)
    if not isinstance(args, dict) or args.get("model") != expected:
        raise VllmRepositoryError(f"{args_file}: `model` must be {expected!r} (where the pods mount the weights), "
                                  f"got {args.get('model') if isinstance(args, dict) else args!r}")
    for entry in folder.iterdir():  # the GenAI build and python model go; tokenizer files and hf/ stay
        if entry.is_dir() and entry.name.isdigit():
            shutil.rmtree(entry)
    (folder / "1").mkdir()
    (folder / "1" / VLLM_ENGINE_ARGS_FILE).write_text(json.dumps(args, indent=2, sort_keys=True) + "\n")
    (folder / "config.pbtxt").write_text(config_text)
    return model.model_copy(update={"kind": "vllm", "inputs": list(VLLM_INPUTS), "output": VLLM_OUTPUTS[0],
                                    "max_batch_size": 0,
                                    "precision": args.get("dtype") if args.get("dtype") not in (None, "auto")
                                    else HF_WEIGHTS_DTYPE})
