"""Tiny models built from configs, tiny datasets, and one embedded Ray for the whole folder."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

POSITIVE = ["great", "good", "lovely", "excellent", "fine", "happy", "bright", "warm"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "sad", "ugly", "dark", "cold"]
FILLER = ["the", "a", "movie", "day", "food", "weather", "was", "is", "very", "quite"]


def word_tokenizer(words: list[str]) -> Any:
    """A whitespace word-level tokenizer over `words` (plus special tokens), as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(words)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]")


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 1
        words = [rng.choice(POSITIVE if positive else NEGATIVE) for _ in range(3)]
        words += [rng.choice(FILLER) for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT (no task head) and a tiny Llama sharing one word tokenizer; a Llama with another tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    tokenizer = word_tokenizer(POSITIVE + NEGATIVE + FILLER)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    llama_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                               bos_token_id=tokenizer.cls_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(llama_config).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    other = word_tokenizer(["completely", "different", "words", *POSITIVE])
    llama_config.vocab_size = len(other)
    LlamaForCausalLM(llama_config).save_pretrained(root / "llama-other")
    other.save_pretrained(root / "llama-other")
    return {"bert": root / "bert", "llama": root / "llama", "llama-other": root / "llama-other"}


@pytest.fixture(scope="session")
def padded_llamas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llamas sharing one word tokenizer whose embeddings are padded past it, differently: 15,616 and
    15,608 rows (multiples of 64 and 8); one with fewer rows than the tokenizer has tokens; one with 16
    positions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("padded")
    tokenizer = word_tokenizer(POSITIVE + NEGATIVE + FILLER)
    found = {}
    for name, vocab, positions in (("15616", 15616, 64), ("15608", 15608, 64), ("short-vocab", 12, 64),
                                   ("16-positions", 15608, 16)):
        config = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=32, max_position_embeddings=positions,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.cls_token_id, tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        found[name] = root / name
    return found


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(sentiment_rows(160), tmp_path_factory.mktemp("data") / "sentiment.jsonl")


def job_manifest(tmp: Path, teacher_uri: Path, data_uri: Path, **spec_overrides: Any) -> dict[str, Any]:
    """A small classification DistillationJob as a dict (camelCase); overrides are merged per section
    (`student` is replaced: it takes exactly one source)."""
    spec: dict[str, Any] = {
        "task": {"type": "sequence-classification", "labels": ["neg", "pos"], "maxLength": 16},
        "teacher": {"uri": str(teacher_uri), "adapt": {"method": "head"}},
        "student": {"architecture": {"numLayers": 1, "hiddenSize": 16, "numAttentionHeads": 2,
                                     "intermediateSize": 32}},
        "dataset": {"uri": str(data_uri), "evalFraction": 0.25},
        "training": {"epochs": 2, "batchSize": 16, "learningRate": 0.01, "checkpointEverySteps": 4},
        "evaluation": {"gate": {"minRetention": None}},
        "output": {"uri": str(tmp / "out")},
        "ray": {"workers": {"replicas": 2}},
    }
    for section, values in spec_overrides.items():
        if section != "student" and isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return {"apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "tiny"},
            "spec": spec}


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the folder (2 CPUs, no dashboard)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()
