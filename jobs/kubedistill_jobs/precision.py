"""Mixed precision (`training.mixedPrecision`) for the student's training and the local teacher's passes."""

from __future__ import annotations

import contextlib
from typing import Any


def autocast(device: Any, mode: str) -> tuple[Any, bool]:
    """(autocast context, whether a GradScaler is needed) for the mixed-precision setting: `auto` is bf16 (or
    fp16) on a GPU and fp32 on a CPU; an explicit `bf16` also runs on a CPU with bf16 instructions (AVX512-BF16,
    AMX: oneDNN's bf16 matrix products, about 1.6x an fp32 step), and fp32 on one without."""
    import torch

    if mode == "no" or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext(), False
    if device.type == "cpu":
        return autocast_cpu(mode), False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), dtype == torch.float16


def autocast_cpu(mode: str) -> Any:
    """bf16 autocast on a CPU for `mixedPrecision: bf16` where the CPU has bf16 instructions; else none (fp32)."""
    import torch

    if mode == "bf16" and cpu_has_bf16():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU (without, bf16 is emulated and slower)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
