"""Structured pruning of the trained student, then a short recovery distillation from the teacher.

Both methods remove whole structures, so the pruned student is an ordinary dense model:
- `layers`: keep the listed transformer layers (their order is kept);
- `heads`: in every attention layer, remove the same share of heads, the ones whose output projection
  carries the least weight (L2 norm), slicing query/key/value rows and output columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kubedistill.api.distillationjob import DistillationJobSpec


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers: the ModuleList as long as config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer layers of {type(model).__name__} to prune")


def _set_layers(model: nn.Module, keep: list[int]) -> None:
    layers = layer_list(model)
    n = len(layers)
    bad = [i for i in keep if not 0 <= i < n]
    if bad or len(set(keep)) != len(keep):
        raise ValueError(
            f"compression.pruning.keepLayers: {keep} must be distinct indices of the student's {n} layers (0..{n - 1})"
        )
    kept = [layers[i] for i in keep]
    for new_index, layer in enumerate(kept):  # caches and rotary code look layers up by index
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    for name, module in model.named_modules():
        if module is layers:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]


def _attention_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    """BERT-style self-attention modules (query/key/value) with their output projection."""
    blocks = []
    for module in model.modules():
        attn = getattr(module, "attention", None)
        self_attn = getattr(attn, "self", None)
        output = getattr(attn, "output", None)
        if self_attn is not None and all(hasattr(self_attn, k) for k in ("query", "key", "value")):
            blocks.append((self_attn, output.dense))
    if not blocks:
        raise ValueError(
            f"compression.pruning.method heads supports BERT-style encoders (query/key/value); "
            f"{type(model).__name__} has none: use method layers instead"
        )
    return blocks


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.index_select(dim, index).detach().clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=bias is not None).to(weight.device, weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias.detach())
    return new


def _prune_heads(model: nn.Module, ratio: float) -> int:
    """Remove `ratio` of every layer's heads (the same number each); returns the heads kept per layer."""
    heads = model.config.num_attention_heads
    remove = math.floor(heads * ratio)
    if remove < 1 or remove >= heads:
        raise ValueError(
            f"compression.pruning.headRatio: {ratio} of {heads} heads removes {remove}; it must remove at "
            f"least one head and keep at least one"
        )
    for self_attn, out_dense in _attention_blocks(model):
        size = self_attn.attention_head_size
        norms = out_dense.weight.detach().view(out_dense.out_features, heads, size).pow(2).sum(dim=(0, 2))
        keep_heads = sorted(norms.argsort(descending=True)[: heads - remove].tolist())
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep_heads]).to(out_dense.weight.device)
        for name in ("query", "key", "value"):
            setattr(self_attn, name, _slice_linear(getattr(self_attn, name), index, 0))
        parent_output = next(m for m in model.modules() if getattr(m, "dense", None) is out_dense)
        parent_output.dense = _slice_linear(out_dense, index, 1)
        self_attn.num_attention_heads = heads - remove
        self_attn.all_head_size = (heads - remove) * size
    return heads - remove


def prune(model: nn.Module, spec: DistillationJobSpec) -> dict[str, Any]:
    """Prune `model` in place per spec.compression.pruning; returns what was done."""
    pruning = spec.compression.pruning
    before = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"method": pruning.method}
    if pruning.method == "layers":
        _set_layers(model, list(pruning.keep_layers or []))
        info["layers_kept"] = list(pruning.keep_layers or [])
    elif pruning.method == "heads":
        info["heads_kept_per_layer"] = _prune_heads(model, float(pruning.head_ratio or 0))
    info["params_before"] = before
    info["params_after"] = sum(p.numel() for p in model.parameters())
    return info


def recover(
    student: nn.Module,
    teacher: nn.Module,
    batches: Callable[[], Any],
    spec: DistillationJobSpec,
    *,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    vocab_size: int | None = None,
) -> list[float]:
    """A short distillation of the pruned student from the teacher: `pruning.recoverySteps` AdamW steps.

    `batches()` yields dicts with student inputs (`input_ids`, `attention_mask`), the teacher's inputs
    under `teacher_input_ids`/`teacher_attention_mask`, and `labels` (or none). Returns the loss per step.
    `vocab_size` (causal-lm): the tokenizer's size; logits are compared over those ids only.
    """
    from kubedistill_jobs.losses import IGNORE_INDEX, distillation_loss, shared_vocab_logits

    steps = spec.compression.pruning.recovery_steps
    dist = spec.distillation
    causal = spec.task.type == "causal-lm"
    student.to(device).train()
    teacher.to(device).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.training.learning_rate * 0.5,
                                  weight_decay=spec.training.weight_decay)
    losses: list[float] = []
    while len(losses) < steps:
        seen = 0
        for batch in batches():
            seen += 1
            b = {k: v.to(device) for k, v in batch.items() if v is not None}
            with torch.no_grad():
                t_logits = teacher(input_ids=b["teacher_input_ids"], attention_mask=b["teacher_attention_mask"]).logits
            s_logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b.get("labels")
            mask = None
            if causal:  # position t predicts token t + 1
                s_logits = shared_vocab_logits(s_logits[:, :-1], vocab_size)
                t_logits = shared_vocab_logits(t_logits[:, :-1], vocab_size)
                mask = b["attention_mask"][:, 1:].bool()
                labels = b["input_ids"][:, 1:].masked_fill(~mask, IGNORE_INDEX)
            parts = distillation_loss(s_logits, t_logits.float(), labels, loss=dist.loss,
                                      temperature=dist.temperature, alpha=dist.alpha, beta=dist.beta, mask=mask)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            losses.append(float(parts.total.detach()))
            if progress:
                progress(len(losses), steps)
            if len(losses) >= steps:
                break
        if not seen:
            raise ValueError("dataset: the training split is empty, nothing to recover the pruned student with")
    student.eval()
    return losses
