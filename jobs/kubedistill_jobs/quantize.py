"""Post-training quantization of an exported ONNX student with ONNX Runtime.

- int8: dynamic quantization (weights INT8, activations quantized on the fly): the path ONNX Runtime's
  CPU kernels and Triton's `onnxruntime` backend run fast. The embedding table is quantized too
  (`Gather`): in a small student with a large vocabulary it is most of the weights.
- int4: weight-only, block-wise 4-bit MatMul (`MatMulNBits`), for causal LMs whose cost is the
  matmuls, with the output layer (the MatMul that writes `logits`) at 8 bits, as in the GenAI build
  (`genai_export.BUILD_OPTIONS`); embeddings stay fp32 (quantizing `Gather` to 4 bits needs opset 21 graphs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubedistill.api.distillationjob import Quantization

SUPPORTED: dict[str, tuple[str, ...]] = {
    "sequence-classification": ("none", "int8"),
    "causal-lm": ("none", "int8", "int4"),
}
INT8_OPS = ["MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization"]
INT4_BLOCK_SIZE = 32


def check_supported(quantization: str, task: str) -> None:
    """Refuse a quantization the task cannot use, before anything is computed."""
    allowed = SUPPORTED.get(task, ())
    if quantization not in allowed:
        raise ValueError(
            f"compression.quantization: {quantization!r} is not supported for task {task!r}; "
            f"use one of {', '.join(allowed)}"
            + (" (int4 is weight-only quantization for causal-lm students)" if quantization == "int4" else "")
        )


def quantized_name(quantization: Quantization) -> str:
    return f"student.{quantization}.onnx"


def quantize(src: Path, dst: Path, quantization: Quantization, task: str) -> Path:
    """Write the quantized graph of `src` to `dst` and return it; `none` returns `src` unchanged."""
    check_supported(quantization, task)
    if quantization == "none":
        return src
    dst.parent.mkdir(parents=True, exist_ok=True)
    if quantization == "int8":
        _int8(src, dst)
    else:
        _int4(src, dst)
    return dst


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger on every call
    try:
        # Per-tensor, signed weights: the layout ONNX Runtime's CPU MatMulInteger kernels are fastest with.
        quantize_dynamic(
            src, dst, op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8, per_channel=False,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)


def _int4(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    output_layer = output_matmuls(model)
    # Asymmetric blocks (a scale and a zero point per 32 weights) keep small LMs' perplexity noticeably
    # closer to fp32 than symmetric ones; no accuracy_level, so activations stay fp32 (weight-only).
    for bits, scope in ((4, {"nodes_to_exclude": output_layer}), (8, {"nodes_to_include": output_layer})):
        if bits == 8 and not output_layer:
            break
        config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=False, bits=bits)
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, **scope)
        quantizer.process()
        model = quantizer.model.model
    onnx.save_model(model, str(dst))


def output_matmuls(model: Any) -> list[str]:
    """Names of the MatMul nodes that write a graph output (a causal LM's vocabulary projection)."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and outputs.intersection(n.output)]
