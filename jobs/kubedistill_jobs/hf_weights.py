"""A causal LM as float16 Hugging Face safetensors, next to its generation model: what Triton's vLLM backend
loads (`triton.backend: vllm`). Tensors are cast file by file, without building the model, so a sharded
checkpoint stays sharded and tied weights stay tied (they are absent from the files, as they were).

Layout: kubedistill.artifacts (`<model>/hf/`, HF_WEIGHTS_FOLDER, HF_WEIGHTS_DTYPE).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kubedistill.artifacts import CHAT_TEMPLATE_FILE, HF_WEIGHTS_DTYPE

# Beside the weights: what vLLM reads to build the model and its tokenizer.
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", CHAT_TEMPLATE_FILE,
          "model.safetensors.index.json")


def write_hf_weights(hf_folder: Path, out: Path, chat_template: str | None = None) -> Path:
    """`out` (replaced): config.json with the float16 dtype, each `*.safetensors` of `hf_folder` with its
    floating-point tensors cast to float16, the tokenizer files and `chat_template` (when given and the folder
    has none). Raises FileNotFoundError naming what is missing (config.json, safetensors weights)."""
    import torch
    from safetensors.torch import load_file, save_file

    hf_folder = Path(hf_folder)
    files = sorted(hf_folder.glob("*.safetensors"))
    if not (hf_folder / "config.json").is_file() or not files:
        raise FileNotFoundError(f"{hf_folder}: vLLM needs config.json and *.safetensors there (save_pretrained "
                                "with safe_serialization); export the model again")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dtype = getattr(torch, HF_WEIGHTS_DTYPE)
    for file in files:
        tensors = load_file(str(file))
        cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        save_file(cast, str(out / file.name), metadata={"format": "pt"})
    config = json.loads((hf_folder / "config.json").read_text())
    # transformers 5 writes `dtype`, older readers (and vLLM's "auto") look at `torch_dtype`: set both.
    config["dtype"] = config["torch_dtype"] = HF_WEIGHTS_DTYPE
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in COPIED:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, out / name)
    if chat_template is not None and not (out / CHAT_TEMPLATE_FILE).is_file():
        (out / CHAT_TEMPLATE_FILE).write_text(chat_template)
    return out
