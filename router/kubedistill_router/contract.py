"""The contract between a model repository and the router, checked where a repository arrives (the fetch
init container) and where it is served (the router's start-up): a repository that cannot serve fails there,
with a message naming the file and the field, and so never reports ready.

Checked: serving.json parses; every model it names has a config.pbtxt that declares the input tensors
the tokenizer fills and the output the router reads, and a version folder with a model file; its tokenizer
folders hold a tokenizer.json that loads; the labels are unique, one per class the output has (classification),
and the logits cover the tokenizer's ids (causal-lm).
"""

from __future__ import annotations

from pathlib import Path

from kubedistill.artifacts import SERVING_MANIFEST, ServedModel, ServingManifest
from kubedistill_router.triton_settings import read_config


class RepositoryError(ValueError):
    """A model repository the router cannot serve: the message names the file and what is wrong."""


def check_repository(repository: Path) -> ServingManifest:
    """The repository's manifest, once every model, tensor, tokenizer and label it names is consistent."""
    if not (repository / SERVING_MANIFEST).is_file():
        raise RepositoryError(f"{repository} is not a model repository: {SERVING_MANIFEST} is missing "
                              "(point the source at a job's <output>/model_repository)")
    try:
        manifest = ServingManifest.read(repository)
    except ValueError as error:
        raise RepositoryError(f"{repository / SERVING_MANIFEST} is not a valid serving manifest: {error}") from None
    missing = [f"{m.name}/config.pbtxt" for m in (manifest.student, manifest.teacher)
               if m is not None and not (repository / m.name / "config.pbtxt").is_file()]
    folders = sorted({manifest.tokenizer, *([manifest.teacher_tokenizer] if manifest.teacher_tokenizer else [])})
    missing += [f"{t}/tokenizer.json" for t in folders if not (repository / t / "tokenizer.json").is_file()]
    if missing:
        raise RepositoryError(f"{repository} is incomplete: {', '.join(missing)} missing")
    if manifest.task == "sequence-classification":
        labels = manifest.labels or []
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise RepositoryError(f"{SERVING_MANIFEST}: labels {labels} must be at least two distinct class names")
    tokenizers = {manifest.student.name: manifest.tokenizer}
    if manifest.teacher is not None:
        tokenizers[manifest.teacher.name] = manifest.teacher_tokenizer or manifest.tokenizer
    for model in (manifest.student, manifest.teacher):
        if model is not None:
            _check_model(repository, manifest, model, repository / tokenizers[model.name])
    return manifest


def _check_model(repository: Path, manifest: ServingManifest, model: ServedModel, tokenizer_dir: Path) -> None:
    path = repository / model.name / "config.pbtxt"
    try:
        config = read_config(path)
    except Exception as error:  # protobuf's text parser names the line
        raise RepositoryError(f"{path}: not a Triton model config: {error}") from None
    inputs = {t.name for t in config.input}
    absent = [name for name in model.inputs if name not in inputs]
    if absent:
        raise RepositoryError(f"{path}: inputs {absent} that {SERVING_MANIFEST} feeds are not declared "
                              f"(declared: {sorted(inputs)})")
    outputs = {t.name: list(t.dims) for t in config.output}
    if model.output not in outputs:
        raise RepositoryError(f"{path}: output {model.output!r} that {SERVING_MANIFEST} reads is not declared "
                              f"(declared: {sorted(outputs)})")
    if not any(v.is_dir() and v.name.isdigit() and any(f.is_file() for f in v.iterdir())
               for v in (repository / model.name).iterdir()):
        raise RepositoryError(f"{repository / model.name}: no version folder with a model file (e.g. 1/model.onnx)")
    tokens = _tokenizer_size(tokenizer_dir)
    if model.kind == "generation":  # one token per response: the vocabulary is the GenAI model's
        _check_generation(repository, model, tokenizer_dir, tokens)
        return
    if model.kind == "vllm":
        _check_vllm(repository, model, config.backend)
        return
    width = outputs[model.output][-1] if outputs[model.output] else -1
    if width < 0:  # a dynamic width: only Triton's answer can tell
        return
    if manifest.task == "sequence-classification" and width != len(manifest.labels or []):
        raise RepositoryError(f"{path}: output {model.output!r} has {width} classes but {SERVING_MANIFEST} "
                              f"names {len(manifest.labels or [])} labels; the repository's parts come from "
                              "different jobs: export it again")
    if manifest.task == "causal-lm" and width < tokens:
        raise RepositoryError(f"{path}: output {model.output!r} has {width} logits per token but the "
                              f"tokenizer in {tokenizer_dir.name}/ has {tokens} tokens")


def _check_generation(repository: Path, model: ServedModel, tokenizer_dir: Path, tokens: int) -> None:
    """A generation model runs ONNX Runtime GenAI from `<version>/genai/`: its config must be there, with a
    vocabulary that covers the tokenizer's ids."""
    import json

    configs = sorted((repository / model.name).glob("*/genai/genai_config.json"))
    if not configs:
        raise RepositoryError(f"{repository / model.name}: a generation model needs <version>/genai/genai_config.json "
                              "(the ONNX Runtime GenAI build); export it again")
    try:
        vocab = int(json.loads(configs[-1].read_text())["model"]["vocab_size"])
    except (ValueError, KeyError, TypeError) as error:
        raise RepositoryError(f"{configs[-1]}: no model.vocab_size ({error})") from None
    if vocab < tokens:
        raise RepositoryError(f"{configs[-1]}: vocab_size {vocab} is below the {tokens} tokens of the tokenizer "
                              f"in {tokenizer_dir.name}/")


def _check_vllm(repository: Path, model: ServedModel, backend: str) -> None:
    """A vLLM model: backend "vllm", engine arguments in 1/model.json, float16 safetensors where they point."""
    import json

    from kubedistill.artifacts import VLLM_ENGINE_ARGS_FILE

    folder = repository / model.name
    if backend != "vllm":
        raise RepositoryError(f"{folder / 'config.pbtxt'}: backend {backend!r}, but {SERVING_MANIFEST} says a vllm "
                              "model")
    args_file = folder / "1" / VLLM_ENGINE_ARGS_FILE
    try:
        args = json.loads(args_file.read_text())
    except (OSError, ValueError) as error:
        raise RepositoryError(f"{args_file}: vLLM's engine arguments cannot be read ({error})") from None
    if not isinstance(args, dict) or not isinstance(args.get("model"), str):
        raise RepositoryError(f"{args_file}: no `model` (the weights' folder)")
    weights = repository / (model.weights or "")
    if model.weights is None or not (weights / "config.json").is_file() or not any(weights.glob("*.safetensors")):
        raise RepositoryError(f"{weights}: a vllm model needs the safetensors and config.json there; export again")


def _tokenizer_size(folder: Path) -> int:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    except Exception as error:
        raise RepositoryError(f"{folder / 'tokenizer.json'}: cannot be loaded: {error}") from None
