"""Distillation losses as pure functions over logits.

Shapes: `V` is the number of classes (classification) or the vocabulary (causal LM); every function
accepts logits of shape `(..., V)` — `(B, V)` for classification, `(B, S, V)` for a causal LM whose
positions the caller has already aligned (student position t predicts token t + 1). `mask` is a bool
tensor of the leading shape `(...)`; positions where it is False (padding, prompt tokens) are left out,
and the loss is the mean over the positions that remain.

The soft term is computed at temperature T on both sides and multiplied by T² (Hinton et al., 2015),
so that its gradient keeps the same scale as the hard-label term when T changes.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossName = Literal["forward-kl", "reverse-kl", "jsd"]
IGNORE_INDEX = -100


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values (...)` over positions where `mask (...)` is True; 0 when none are."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """KL(p ‖ q) per position, from log-probabilities `(..., V)` → `(...)`. 0·log 0 counts as 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


def kl_from_logprobs(
    student_log: Tensor, teacher_log: Tensor, *, loss: LossName = "forward-kl", beta: float = 0.5
) -> Tensor:
    """The divergence between two distributions given as log-probabilities `(..., V)`, per position `(...)`.

    - `forward-kl`: KL(teacher ‖ student), mean-seeking (classic KD).
    - `reverse-kl`: KL(student ‖ teacher), mode-seeking (MiniLLM).
    - `jsd`: generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024) with mixture
      m = β·teacher + (1 − β)·student: β·KL(teacher ‖ m) + (1 − β)·KL(student ‖ m). As in TRL's
      `generalized_jsd_loss`, β = 0 is the forward KL and β = 1 the reverse KL exactly.
    """
    if loss == "forward-kl":
        return _kl(teacher_log, student_log)
    if loss == "reverse-kl":
        return _kl(student_log, teacher_log)
    if loss != "jsd":
        raise ValueError(f"distillation.loss: unknown loss {loss!r}; expected forward-kl, reverse-kl or jsd")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"distillation.beta: {beta} is outside [0, 1]")
    if beta == 0.0:
        return _kl(teacher_log, student_log)
    if beta == 1.0:
        return _kl(student_log, teacher_log)
    mixture = torch.logsumexp(
        torch.stack([teacher_log + math.log(beta), student_log + math.log(1.0 - beta)]), dim=0
    )
    return beta * _kl(teacher_log, mixture) + (1.0 - beta) * _kl(student_log, mixture)


def soft_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    teacher_topk_indices: Tensor | None = None,
    loss: LossName = "forward-kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
    teacher_topk_logprobs: bool = False,
    student_log_probs: bool = False,
) -> Tensor:
    """T²·D(teacher_T, student_T) averaged over positions, a scalar.

    student_logits `(..., V)`; teacher_logits `(..., V)`, or, with `teacher_topk_indices` `(..., k)`, the
    teacher's logits or log-probabilities of its k most likely tokens `(..., k)` (cached top-k; equals the full
    loss when k = V). With `teacher_topk_logprobs` (the values are full-vocabulary log-probabilities), a forward
    KL at temperature 1 keeps the teacher's mass outside the k tokens as one more bucket, against the student's
    mass outside them: the divergence of the two distributions coarsened to k + 1 outcomes (exact when k = V - 1,
    never above the full divergence), where renormalising over the k overstates the teacher's top tokens.
    `student_log_probs`: student_logits are already log-probabilities (a log-softmax at temperature 1, shared
    with the hard term); only valid at temperature 1.
    """
    if student_log_probs and temperature != 1.0:
        raise ValueError("student log-probabilities stand for logits at temperature 1 only")
    if teacher_topk_indices is None:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                "differ: student and teacher must share the label set (classification) or the vocabulary (causal-lm)"
            )
        student_log = student_logits if student_log_probs else F.log_softmax(student_logits.float() / temperature,
                                                                             dim=-1)
        teacher_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    elif (teacher_topk_logprobs and loss == "forward-kl" and temperature == 1.0
          and teacher_topk_indices.shape[-1] < student_logits.shape[-1]):  # k = V: no rest, renormalising is exact
        student_log, teacher_log = _topk_with_rest(student_logits, teacher_logits, teacher_topk_indices,
                                                   normalized=student_log_probs)
    else:
        student_log, teacher_log = _topk_logprobs(student_logits, teacher_logits, teacher_topk_indices, loss,
                                                  temperature, normalized=student_log_probs)
    per_position = kl_from_logprobs(student_log, teacher_log, loss=loss, beta=beta)
    return temperature**2 * _masked_mean(per_position, mask)


def _topk_logprobs(student_logits: Tensor, teacher_topk_values: Tensor, teacher_topk_indices: Tensor,
                   loss: LossName, temperature: float, *, normalized: bool = False) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the teacher's k tokens, each `(..., k)`.

    The teacher distribution is its softmax renormalised over those k tokens (the mass outside is unknown, so
    taken as 0).

    - forward KL: Σ_k p_t · (log p_t − log q_s), with q_s the student's full-vocabulary softmax, so the
      loss also pulls student mass out of the tokens the teacher left out.
    - reverse KL and JSD: both distributions renormalised over the k tokens (a reverse KL against a
      teacher with zero mass outside them would be infinite).
    """
    k = teacher_topk_values.shape[-1]
    vocab = student_logits.shape[-1]
    if k > vocab:
        raise ValueError(f"distillation.topK: k = {k} is larger than the vocabulary ({vocab})")
    if teacher_topk_indices.shape != teacher_topk_values.shape:
        raise ValueError("teacher top-k values and indices must have the same shape (..., k)")
    teacher_log = F.log_softmax(teacher_topk_values.float() / temperature, dim=-1)
    scaled = student_logits.float() / temperature
    gathered = scaled.gather(-1, teacher_topk_indices.long())
    if loss == "forward-kl":
        student_log = gathered if normalized else gathered - torch.logsumexp(scaled, dim=-1, keepdim=True)
    else:
        # A repeated id (a slot the teacher left empty, at about -1e4: fewer candidates than k, or one a trimmed
        # vocabulary lacks) counts once, in its slot of largest teacher value: the copies get no student mass in
        # the renormalisation either.
        student_log = F.log_softmax(gathered.masked_fill(_weaker_copies(teacher_topk_indices, teacher_topk_values),
                                                         -1e4), dim=-1)
    return student_log, teacher_log


def _weaker_copies(indices: Tensor, values: Tensor) -> Tensor:
    """`(..., k)` bool: slots whose id another slot holds with a larger value (or an equal one, earlier)."""
    same = indices.long()[..., :, None] == indices.long()[..., None, :]  # [j, i]: slots j and i hold one id
    other, this = values[..., None, :], values[..., :, None]
    earlier = torch.ones(same.shape[-2:], dtype=torch.bool, device=same.device).tril(-1)
    return (same & ((other > this) | ((other == this) & earlier))).any(-1)


def _topk_with_rest(student_logits: Tensor, teacher_topk_logprobs: Tensor, teacher_topk_indices: Tensor,
                    *, normalized: bool = False) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the teacher's k tokens and the rest of the vocabulary, each
    `(..., k + 1)`. Repeated indices (padding slots of fewer candidates, at about -1e4) count once in the rest."""
    if teacher_topk_indices.shape != teacher_topk_logprobs.shape:
        raise ValueError("teacher top-k values and indices must have the same shape (..., k)")
    teacher_k = teacher_topk_logprobs.float()
    inside = teacher_k.exp().sum(-1, keepdim=True).clamp(max=1.0 - 1e-6)  # float16 values may sum a hair over 1
    teacher_log = torch.cat([teacher_k, torch.log1p(-inside)], dim=-1)
    logits = student_logits.float()
    indices = teacher_topk_indices.long()
    student_k = logits.gather(-1, indices)  # (..., k)
    if not normalized:
        student_k = student_k - torch.logsumexp(logits, dim=-1, keepdim=True)
    # The rest from the k alone (no second pass over the vocabulary): 1 - Σ q over the distinct indices.
    repeated = _weaker_copies(indices, teacher_k)  # (..., k): each id once
    inside_log = torch.logsumexp(student_k.masked_fill(repeated, float("-inf")), dim=-1, keepdim=True)
    rest = torch.log(-torch.expm1(inside_log.clamp(max=-1e-7)))  # log(1 - e^x), exact for x near 0
    return torch.cat([student_k, rest], dim=-1), teacher_log


def shared_vocab_logits(logits: Tensor, vocab_size: int | None) -> Tensor:
    """Logits `(..., V)` cut to the token range teacher and student share, `(..., vocab_size)`.

    Embedding matrices are often padded beyond the tokenizer (to a multiple of 8 or 64): the rows past the
    tokenizer's size are no tokens, so distributions are compared over ids < `vocab_size` (the tokenizer's
    size) only, whatever each model's padding. None keeps the logits whole (classification).
    Raises ValueError when the logits are narrower than the range (preflight refuses such a model first).
    """
    if vocab_size is None:
        return logits
    if logits.shape[-1] < vocab_size:
        raise ValueError(f"logits of width {logits.shape[-1]} do not cover the tokenizer's {vocab_size} tokens")
    return logits[..., :vocab_size]


def uld_loss(student_logits: Tensor, teacher_sorted_probs: Tensor, *, temperature: float = 1.0,
             mask: Tensor | None = None) -> Tensor:
    """Universal Logit Distillation (Boizard et al., 2024): the L1 distance between the two token
    distributions each sorted by probability, which needs no shared vocabulary. A scalar, the mean over the
    positions in `mask (...)`.

    student_logits `(..., V_s)`, taken at temperature T; teacher_sorted_probs `(..., k)`: the teacher's k
    largest probabilities (at T) in decreasing order. The shorter side is padded with zeros: the teacher's
    mass past its k cached tokens counts as 0 (exact when k covers its vocabulary), so with k < V_s the
    distance is Σ_{i<k} |s_(i) − t_(i)| + Σ_{i≥k} s_(i), s_(i) the student's i-th largest probability.
    """
    k = teacher_sorted_probs.shape[-1]
    student = F.softmax(student_logits.float() / temperature, dim=-1)
    vocab = student.shape[-1]
    teacher = teacher_sorted_probs.float()
    if k >= vocab:
        top = student.sort(dim=-1, descending=True).values
        top = F.pad(top, (0, k - vocab))
        per_position = (top - teacher).abs().sum(-1)
    else:
        top = student.topk(k, dim=-1).values
        per_position = (top - teacher).abs().sum(-1) + (1.0 - top.sum(-1)).clamp_min(0.0)
    return _masked_mean(per_position, mask)


def answer_positions(answer_start: Tensor, positions: Tensor) -> Tensor:
    """Which of `positions (W,)` predict an answer token in each row, `(B, W)`, for a completion-only loss (TRL's
    completion_only_loss) or a drawn share of the prompt: position t predicts token t + 1, so an answer starting
    at token s (`answer_start (B,)`) is predicted from position s - 1 on. Padding is the caller's mask."""
    return positions[None, :] >= (answer_start.long()[:, None] - 1)


def hard_loss(student_logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX,
              student_log_probs: bool = False) -> Tensor:
    """Cross-entropy with the gold labels: logits `(..., V)` (or log-probabilities, `student_log_probs`),
    labels `(...)` (ignore_index skipped); 0 if none."""
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != ignore_index).any()):
        return student_logits.float().sum() * 0.0  # keeps the graph, contributes nothing
    if student_log_probs:
        return F.nll_loss(student_logits.reshape(-1, student_logits.shape[-1]), flat_labels, ignore_index=ignore_index)
    return F.cross_entropy(
        student_logits.float().reshape(-1, student_logits.shape[-1]), flat_labels, ignore_index=ignore_index
    )


class LossParts(NamedTuple):
    """The total loss and its parts (all scalars); `total` is what is back-propagated."""

    total: Tensor
    soft: Tensor
    hard: Tensor


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    *,
    loss: LossName = "forward-kl",
    temperature: float = 2.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    teacher_topk_indices: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    teacher_topk_logprobs: bool = False,
) -> LossParts:
    """alpha · T² · D(teacher_T ‖ student_T) + (1 − alpha) · CE(student, labels).

    student_logits `(..., V)`. teacher_logits: full teacher logits `(..., V)`, or cached top-k values
    `(..., k)` when `teacher_topk_indices (..., k)` is given. labels `(...)` with `ignore_index` where
    there is no gold label, or None (unlabelled data: the hard term is 0). mask `(...)`: positions that
    count in the soft term; when None and labels are given, positions whose label is `ignore_index`
    are left out of the soft term too (label masking for causal LMs). `teacher_topk_logprobs`: the top-k
    values are full-vocabulary log-probabilities at temperature 1 (see `soft_loss`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation.alpha: {alpha} is outside [0, 1]")
    if mask is None and labels is not None and student_logits.dim() > 2:
        mask = labels != ignore_index
    counted = None if mask is None or student_logits.dim() <= 2 else (
        mask if labels is None else mask | (labels != ignore_index))  # (..., L)
    if counted is not None and not bool(counted.all()):  # sequences: vocabulary-wide work on counted positions only
        student_logits, mask = student_logits[counted], mask[counted]  # (N, V), (N,)
        labels = None if labels is None else labels[counted]
        if teacher_logits is not None:
            teacher_logits = teacher_logits[counted]
        if teacher_topk_indices is not None:
            teacher_topk_indices = teacher_topk_indices[counted]
    zero = student_logits.float().sum() * 0.0
    soft_wanted = teacher_logits is not None and alpha > 0
    # Both terms at temperature 1 normalise the same logits: one log-softmax over the vocabulary serves both
    # (the largest tensors of a causal-LM step) instead of one each.
    shared = soft_wanted and labels is not None and temperature == 1.0
    if shared:
        student_logits = F.log_softmax(student_logits.float(), dim=-1)
    soft = zero
    if soft_wanted:
        soft = soft_loss(student_logits, teacher_logits, teacher_topk_indices=teacher_topk_indices, loss=loss,
                         temperature=temperature, beta=beta, mask=mask, teacher_topk_logprobs=teacher_topk_logprobs,
                         student_log_probs=shared)
    hard = zero
    if labels is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and (alpha < 1 or teacher_logits is None)):
            hard = hard_loss(student_logits, labels, ignore_index=ignore_index,
                             student_log_probs=shared)  # reported even when unweighted
    if teacher_logits is None:  # no teacher signal: plain supervised training
        return LossParts(hard, soft, hard)
    return LossParts(alpha * soft + (1.0 - alpha) * hard, soft, hard)


class HiddenStateProjection(nn.Module):
    """Feature distillation: a learned linear map from the student's hidden size to the teacher's.

    `forward(student_hidden (..., H_s), teacher_hidden (..., H_t), mask (...) | None)` returns the mean
    squared error between the projected student states and the teacher's, averaged over features and
    the positions in `mask`. The projection is trained with the student and discarded afterwards.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(student_hidden, teacher_hidden)

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        projected = self.proj(student_hidden.to(self.proj.weight.dtype))
        per_position = (projected.float() - teacher_hidden.float()).pow(2).mean(-1)
        return _masked_mean(per_position, mask)


def hidden_state_loss(
    projection: HiddenStateProjection, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None
) -> Tensor:
    """MSE(projection(student_hidden), teacher_hidden) over the positions in mask; see HiddenStateProjection."""
    return projection(student_hidden, teacher_hidden, mask)
