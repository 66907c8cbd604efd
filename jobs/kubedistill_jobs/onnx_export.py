"""PyTorch → ONNX: one graph per model with inputs `input_ids`, `attention_mask` (INT64, [batch, seq]) and
output `logits` (FP32; [batch, num_labels] for classification, [batch, seq, vocab] for a causal LM).

The graph's names are the contract with Triton's config.pbtxt and the router, so they live here once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
# Recent enough for ONNX Runtime's dynamic and block-wise quantizers, old enough for every current runtime.
OPSET = 18
_PROBE_TEXTS = ("A short probe sentence for the exporter.", "And a second, somewhat longer one so the batch pads.")


def logits_module(model: Any, task: str) -> Any:
    """`model` wrapped so that a trace takes two tensors and returns only the logits."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if task == "causal-lm":
                kwargs["use_cache"] = False
            return self.model(**kwargs).logits

    return LogitsOnly().eval()


def as_cpu_fp32(model: Any) -> Any:
    """The model on the CPU in fp32 (the exported graph's precision), in eval mode."""
    import torch

    model = model.to("cpu")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        # Only when needed: transformers refuses `.float()` on models loaded from quantized checkpoints
        # (GGUF), which it has already dequantized to the requested dtype.
        model = model.float()
    return model.eval()


def probe_inputs(tokenizer: Any, max_length: int, texts: tuple[str, ...] = _PROBE_TEXTS) -> dict[str, np.ndarray]:
    """Real tokenized inputs (padded, so the mask has zeros) as INT64 numpy arrays."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def export_onnx(model: Any, tokenizer: Any, path: Path, *, task: str, max_length: int) -> dict[str, Any]:
    """Export `model` to `path` (fp32, CPU trace); returns the graph's input and output names and opset.

    The legacy TorchScript tracer is used on purpose: it exports BERT- and Llama-family models in under a
    second, where the dynamo exporter takes tens of seconds for the same graph.
    """
    import torch

    if task not in ("sequence-classification", "causal-lm"):
        raise ValueError(f"task.type: cannot export task {task!r}; expected sequence-classification or causal-lm")
    if tokenizer.pad_token is None:  # causal-LM tokenizers often have none; padding the probe needs one
        tokenizer.pad_token = tokenizer.eos_token
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = as_cpu_fp32(model)
    wrapped = logits_module(model, task)
    probe = {k: torch.from_numpy(v) for k, v in probe_inputs(tokenizer, max_length).items()}
    out_axes = {0: "batch"} if task == "sequence-classification" else {0: "batch", 1: "sequence"}
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES} | {OUTPUT_NAME: out_axes}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-side shape checks inside transformers; the equivalence check
        # on real inputs (`max_abs_diff`) is what proves the graph right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (probe["input_ids"], probe["attention_mask"]),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return {"inputs": list(INPUT_NAMES), "outputs": [OUTPUT_NAME], "opset": OPSET}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX element type name: INT64, FLOAT, ...
    dims: tuple[int, ...]  # -1 for a dynamic axis


def graph_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as declared in the ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(value.name, onnx.TensorProto.DataType.Name(t.elem_type), dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; `threads` fixes the intra-op thread count (for stable latencies)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Busy-waiting worker threads help only on idle, dedicated cores; on a shared node they fight
        # the other tenants and turn p50 into noise.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(sess: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    feed = {name: np.asarray(batch[name], dtype=np.int64) for name in INPUT_NAMES}
    return np.asarray(sess.run([OUTPUT_NAME], feed)[0])


def torch_logits(model: Any, batch: dict[str, np.ndarray], task: str) -> np.ndarray:
    import torch

    wrapped = logits_module(as_cpu_fp32(model), task)
    with torch.no_grad():
        out = wrapped(*(torch.from_numpy(np.asarray(batch[n], dtype=np.int64)) for n in INPUT_NAMES))
    return out.numpy()


def compare(model: Any, onnx_path: Path, batch: dict[str, np.ndarray], task: str) -> tuple[float, float]:
    """(largest |PyTorch − ONNX| logit difference, largest |PyTorch logit|) on `batch`, over real positions."""
    ref = torch_logits(model, batch, task)
    diff = np.abs(ref - onnx_logits(session(onnx_path), batch))
    if task == "causal-lm":
        keep = np.asarray(batch["attention_mask"]).astype(bool)
        diff, ref = diff[keep], ref[keep]
    return float(diff.max()), float(np.abs(ref).max())


def max_abs_diff(model: Any, onnx_path: Path, batch: dict[str, np.ndarray], task: str) -> float:
    """Largest |PyTorch − ONNX| logit difference on `batch`, over real (unmasked) positions."""
    return compare(model, onnx_path, batch, task)[0]
