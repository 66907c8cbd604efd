"""Causal-LM models built for generation: ONNX Runtime GenAI's model builder (KV cache, INT4/INT8 weights)
wrapped in a decoupled Triton python-backend model that streams tokens with their log-probabilities.

Layout inside the model repository: kubedistill.artifacts (kind "generation"). The python model is
`triton_models/generate.py`; its tensors are kubedistill.artifacts.GENERATION_INPUTS / GENERATION_OUTPUTS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kubedistill.artifacts import (
    CHAT_TEMPLATE_FILE,
    GENERATION_INPUTS,
    GENERATION_OUTPUTS,
    HF_WEIGHTS_FOLDER,
    ServedModel,
    decoupled_model_config,
)

GENERATE_MODEL = Path(__file__).with_name("triton_models") / "generate.py"
GENAI_FOLDER = "genai"
# compression.quantization → the builder's precision (weight-only MatMulNBits for int4 and int8).
PRECISIONS = {"none": "fp32", "int8": "int8", "int4": "int4"}
# The builder's --extra_options per precision. int4 keeps the output layer at 8 bits, as llama.cpp's Q4_K_M
# keeps its output weight at 6: a small student's vocabulary-wide projection is the weight 4 bits hurt most
# (headline ROUGE-L 0.0696 → 0.0774 against the fp32 student's 0.0844, README.md). The builder writes an int8
# output layer only when it is not tied to the embedding (a tied one builds a graph GenAI cannot load), so
# the two are stored apart, the embedding as 4-bit blocks (GatherBlockQuantized).
BUILD_OPTIONS: dict[str, tuple[str, ...]] = {
    "int4": ("matmul_mixed_precision=last_matmul:int8", "shared_embeddings=false",
             "op_types_to_quantize=MatMul/Gather"),
}
_TENSORS = {
    "input_ids": ("TYPE_INT64", "-1", False),
    "max_tokens": ("TYPE_INT32", "1", False),
    "temperature": ("TYPE_FP32", "1", True),
    "top_p": ("TYPE_FP32", "1", True),
    "seed": ("TYPE_INT64", "1", True),
    "top_logprobs": ("TYPE_INT32", "1", True),
    "token_id": ("TYPE_INT64", "1", False),
    "logprob": ("TYPE_FP32", "1", False),
    "top_ids": ("TYPE_INT64", "-1", False),
    "top_logprobs_values": ("TYPE_FP32", "-1", False),
}


class GenaiBuildError(RuntimeError):
    """The ONNX Runtime GenAI builder failed; the message holds the end of its log."""


def precision_for(quantization: str) -> str:
    """The builder's precision for `compression.quantization` (none, int8, int4); ValueError otherwise."""
    if quantization not in PRECISIONS:
        raise ValueError(f"compression.quantization: {quantization!r} cannot be built for generation; expected "
                         f"one of {', '.join(PRECISIONS)}")
    return PRECISIONS[quantization]


def build_genai_model(hf_folder: Path, out: Path, precision: str, *, timeout: float = 1800) -> Path:
    """Run `python -m onnxruntime_genai.models.builder` on a Hugging Face folder (config, safetensors,
    tokenizer) into `out` (replaced): model.onnx (+ .data), genai_config.json, tokenizer files.

    CPU build (`-e cpu`); the graph runs on CUDA too through ONNX Runtime GenAI's CUDA package. Raises
    GenaiBuildError with the builder's log when it fails, FileNotFoundError when the folder has no config.
    """
    hf_folder = Path(hf_folder)
    if not (hf_folder / "config.json").is_file():
        raise FileNotFoundError(f"{hf_folder} has no config.json: save the causal LM there (save_pretrained)")
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", cache]
        if precision in BUILD_OPTIONS:
            cmd += ["--extra_options", *BUILD_OPTIONS[precision]]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not (out / "genai_config.json").is_file():
        raise GenaiBuildError(f"the ONNX Runtime GenAI builder failed on {hf_folder} (precision {precision}, "
                              f"exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return out


def render_generation_config(name: str) -> str:
    """config.pbtxt of a generation model: python backend, decoupled, no Triton batching (each request
    generates in its own thread inside the model)."""
    return decoupled_model_config("python", _TENSORS, GENERATION_INPUTS, GENERATION_OUTPUTS, "KIND_CPU", name)


def chat_template(tokenizer_folder: Path) -> str | None:
    """The chat template a tokenizer folder carries (chat_template.jinja, else tokenizer_config.json's)."""
    file = tokenizer_folder / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text()
    config = tokenizer_folder / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("chat_template")
        if isinstance(value, str):
            return value
    return None


def write_generation_model(repo: Path, name: str, genai_folder: Path) -> ServedModel:
    """`<repo>/<name>/`: config.pbtxt, 1/model.py, 1/genai/ (a copy of `genai_folder`), and the tokenizer
    files and chat template beside them for the router."""
    model_dir = repo / name
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a re-export replaces the model whole
    version = model_dir / "1"
    shutil.copytree(genai_folder, version / GENAI_FOLDER)
    shutil.copy2(GENERATE_MODEL, version / "model.py")
    (model_dir / "config.pbtxt").write_text(render_generation_config(name))
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", CHAT_TEMPLATE_FILE):
        if (genai_folder / file).is_file():
            shutil.copy2(genai_folder / file, model_dir / file)
    config = json.loads((genai_folder / "genai_config.json").read_text())
    return ServedModel(name=name, inputs=list(GENERATION_INPUTS), output=GENERATION_OUTPUTS[0], max_batch_size=0,
                       kind="generation", precision=_precision_of(genai_folder),
                       context_length=int(config["model"]["context_length"]))


PRECISION_MARKER = "kubedistill_precision.txt"


def _recipe(precision: str) -> str:
    """What a build's marker records: the precision on the first line, the builder's options (if any) on the
    second (a build with other options is stale)."""
    options = " ".join(BUILD_OPTIONS.get(precision, ()))
    return f"{precision}\n{options}\n" if options else f"{precision}\n"


def _precision_of(genai_folder: Path) -> str | None:
    marker = genai_folder / PRECISION_MARKER
    return marker.read_text().splitlines()[0].strip() if marker.is_file() else None


def is_fresh(build: Path, hf_folder: Path, precision: str) -> bool:
    """Whether `build` holds a GenAI build of `hf_folder` at `precision` newer than the folder's weights (the
    evaluation builds the models the export then serves)."""
    marker = build / PRECISION_MARKER
    if not (build / "genai_config.json").is_file() or not marker.is_file() or marker.read_text() != _recipe(precision):
        return False
    built = (build / "genai_config.json").stat().st_mtime
    sources = [p for p in Path(hf_folder).iterdir() if p.suffix in (".safetensors", ".json", ".bin")]
    return all(p.stat().st_mtime <= built for p in sources)


def ensure_build(hf_folder: Path, build: Path, precision: str) -> Path:
    """`build` as a GenAI build of `hf_folder` at `precision`, rebuilt only when stale."""
    if not is_fresh(build, hf_folder, precision):
        build_genai_model(hf_folder, build, precision)
        (build / PRECISION_MARKER).write_text(_recipe(precision))
    return build


def build_and_write(repo: Path, name: str, hf_folder: Path, precision: str, work: Path) -> ServedModel:
    """Build `hf_folder` at `precision` into `work/<name>` (kept: the benchmark and tests run it directly)
    and write the Triton generation model `<repo>/<name>` from it, with the float16 safetensors beside it
    (`<name>/hf/`, for a StudentDeployment with `triton.backend: vllm`)."""
    from kubedistill_jobs.hf_weights import write_hf_weights

    genai = ensure_build(hf_folder, work / name, precision)
    template = chat_template(hf_folder)
    if template is not None and not (genai / CHAT_TEMPLATE_FILE).is_file():
        (genai / CHAT_TEMPLATE_FILE).write_text(template)
    served = write_generation_model(repo, name, genai)
    write_hf_weights(hf_folder, repo / name / HF_WEIGHTS_FOLDER, template)
    return served.model_copy(update={"weights": f"{name}/{HF_WEIGHTS_FOLDER}"})
