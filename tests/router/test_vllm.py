"""`triton.backend: vllm` on the router's side: the fetch step turns a causal-LM repository's generation models
into vLLM models from the operator's rendered files, the export's float16 weights load and answer as the
model does, and the router reads the vLLM backend's answers (its `logprobs` JSON, as the backend writes it)
into tokens with their log-probabilities. vLLM itself needs a GPU and does not run here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from kubedistill_operator.builders.vllm import config_map_data
from kubedistill_router.contract import check_repository
from kubedistill_router.errors import UpstreamError
from kubedistill_router.fetch import FetchError, fetch
from kubedistill_router.openai_api import parse_request
from kubedistill_router.triton_settings import TritonSettings
from kubedistill_router.vllm_client import parse_logprobs, sampling_parameters

from kubedistill.api import StudentDeployment, parse_resource
from kubedistill.artifacts import VLLM_INPUTS, ServingManifest

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 48
POD_MODELS = Path("/models")  # where a StudentDeployment's containers mount the repository


def _tiny_causal_lm(folder: Path) -> None:
    """A 1-layer Llama and a word-level tokenizer of the same vocabulary, saved as a job saves its student."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A causal-LM model repository with a student and a teacher, written by the export's own writers (the
    ONNX Runtime GenAI build replaced by its config, which is all the fetch step and the contract read)."""
    from kubedistill_jobs.genai_export import write_generation_model
    from kubedistill_jobs.hf_weights import write_hf_weights

    root = tmp_path_factory.mktemp("vllm")
    hf, genai, repo = root / "hf", root / "genai", root / "repo"
    _tiny_causal_lm(hf)
    genai.mkdir()
    (genai / "genai_config.json").write_text(json.dumps({"model": {"vocab_size": VOCAB, "context_length": 64}}))
    (genai / "tokenizer.json").write_bytes((hf / "tokenizer.json").read_bytes())
    repo.mkdir()
    served = {}
    for name in ("student", "teacher"):
        model = write_generation_model(repo, name, genai)
        write_hf_weights(hf, repo / name / "hf")
        served[name] = model.model_copy(update={"weights": f"{name}/hf"})
    ServingManifest(task="causal-lm", max_length=64, tokenizer="student", student=served["student"],
                    teacher=served["teacher"], model_version="v1", confidence_signal="token-quantile",
                    recommended_threshold=0.3).write(repo)
    return repo


def _deployment(router: dict | None = None) -> StudentDeployment:
    doc = yaml.safe_load((ROOT / "examples/quickstart/studentdeployment.yaml").read_text())
    doc["spec"]["triton"] = {"backend": "vllm", "gpus": 1}
    doc["spec"]["router"] = {**doc["spec"].get("router", {}), **(router or {})}
    parsed = parse_resource(doc)
    assert isinstance(parsed, StudentDeployment)
    return parsed


def _rendered(tmp_path: Path, sd: StudentDeployment, name: str = "configmap") -> Path:
    """The ConfigMap's files as the fetch container sees them mounted."""
    folder = tmp_path / name
    folder.mkdir()
    for key, text in config_map_data(sd).items():
        (folder / key).write_text(text)
    return folder


def test_fetch_turns_generation_models_into_vllm_models(repository, tmp_path):
    dest = tmp_path / "models"
    manifest = fetch(str(repository), dest, settings=TritonSettings(backend="vllm", instance_kind="KIND_GPU"),
                     vllm_files=_rendered(tmp_path, _deployment()), served_at=POD_MODELS)
    assert check_repository(dest) == manifest
    for model in (manifest.student, manifest.teacher):
        assert model is not None and model.kind == "vllm" and model.inputs == list(VLLM_INPUTS)
        folder = dest / model.name
        assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.json"]  # the GenAI build is gone
        args = json.loads((folder / "1" / "model.json").read_text())
        assert args["model"] == f"/models/{model.name}/hf"  # where the pod's Triton finds them
        assert 'backend: "vllm"' in (folder / "config.pbtxt").read_text()  # as rendered, not rewritten to GPU
        assert "KIND_GPU" not in (folder / "config.pbtxt").read_text()
    assert ServingManifest.read(dest).student.kind == "vllm"


def test_a_teacher_the_router_never_calls_is_not_served(repository, tmp_path):
    dest = tmp_path / "models"
    manifest = fetch(str(repository), dest, settings=TritonSettings(backend="vllm"),
                     vllm_files=_rendered(tmp_path, _deployment({"mode": "student-only"})), served_at=POD_MODELS)
    assert manifest.teacher is None and not (dest / "teacher").exists()
    assert manifest.student.kind == "vllm"


def test_fetch_refuses_what_vllm_cannot_serve(repository, tmp_path):
    files = _rendered(tmp_path, _deployment())
    args = json.loads((files / "vllm-student.json").read_text())
    (files / "vllm-student.json").write_text(json.dumps({**args, "model": "/elsewhere/hf"}))
    with pytest.raises(FetchError, match="`model` must be"):
        fetch(str(repository), tmp_path / "a", settings=TritonSettings(backend="vllm"), vllm_files=files,
              served_at=POD_MODELS)
    with pytest.raises(FetchError, match=r"vllm-config\.pbtxt is missing"):
        fetch(str(repository), tmp_path / "b", settings=TritonSettings(backend="vllm"), vllm_files=tmp_path / "none")
    old = tmp_path / "old"  # exported before the float16 weights were part of the export
    shutil.copytree(repository, old)
    shutil.rmtree(old / "student" / "hf")
    with pytest.raises(FetchError, match="export it again"):
        fetch(str(old), tmp_path / "c", settings=TritonSettings(backend="vllm"),
              vllm_files=_rendered(tmp_path, _deployment(), "fresh"), served_at=POD_MODELS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing half-written


def test_the_float16_weights_answer_as_the_model_does(repository):
    import torch
    from transformers import AutoModelForCausalLM

    weights = repository / "student" / "hf"
    config = json.loads((weights / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "float16"
    half = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float16)
    full = AutoModelForCausalLM.from_pretrained(repository.parent / "hf", dtype=torch.float32)
    assert next(half.parameters()).dtype == torch.float16
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        expected = full(ids).logits
        got = half.float()(ids).logits
    assert torch.allclose(got, expected, atol=2e-2), (got - expected).abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def _logprobs_json(entries: list[list[tuple[int, float, int]]]) -> bytes:
    """What the vLLM backend writes (utils/request.py, create_response): a JSON list per new token of
    {token_id: {logprob, rank, decoded_token}}, the sampled token first; json.dumps makes the ids strings."""
    return json.dumps([{tid: {"logprob": lp, "rank": rank, "decoded_token": f"t{tid}"} for tid, lp, rank in entry}
                       for entry in entries]).encode()


def test_tokens_come_from_the_backends_logprobs():
    # Sampled (not greedy): token 7 at rank 3 comes first; the top-2 are ranks 1 and 2.
    text = _logprobs_json([[(7, -2.5, 3), (4, -0.3, 1), (9, -1.6, 2)], [(11, -0.01, 1)]])
    first, second = parse_logprobs(text, top=2)
    assert (first.id, first.logprob) == (7, -2.5) and first.top == [(4, -0.3), (9, -1.6)]
    assert (second.id, second.logprob, second.top) == (11, -0.01, [(11, -0.01)])
    assert [t.top for t in parse_logprobs(text, top=0)] == [[], []]
    with pytest.raises(UpstreamError, match="logprobs"):
        parse_logprobs(b"null", top=0)  # logprobs not computed: the router cannot judge the draft


def test_sampling_parameters_are_vllms():
    request = parse_request({"model": "m", "prompt": "w1 w2", "max_tokens": 12, "temperature": 0, "top_p": 0.9,
                             "seed": 2**40 + 5, "logprobs": 3}, chat=False, model_name="m", max_tokens_cap=64)
    params = sampling_parameters(request)
    # vllm/sampling_params.py, SamplingParams fields.
    assert params == {"max_tokens": 12, "temperature": 0.0, "top_p": 0.9, "logprobs": 3, "seed": 5}


def test_local_serving_leaves_the_vllm_weights_out(repository, tmp_path):
    from kubedistill_router.local.repository import build_local_repository

    local = build_local_repository(repository, tmp_path / "local")
    assert (repository / "student" / "hf").is_dir() and not (local / "student" / "hf").exists()
    assert (local / "student" / "1" / "model.py").is_file() and (local / "teacher" / "config.pbtxt").is_file()
