"""A causal LM's own answers to a batch of prompts, laid out as a training batch: what an on-policy step of the
recipe trains on (the student samples, the teacher scores the samples, the loss counts the sampled tokens).

Shapes: B prompts, P the longest prompt, G the tokens generated, L = the longest prompt + answer.
"""

from __future__ import annotations

from typing import Any


def generation_config(max_new_tokens: int, temperature: float, eos_token_id: int | None, pad_token_id: int | None,
                      suppress: list[int] | None = None) -> Any:
    """Sampling from the model's own distribution (no top-k, no top-p) at `temperature`; 0 is greedy.
    `suppress`: ids never generated (rows of a padded embedding that are no tokens)."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
        top_k=0 if sample else None, top_p=1.0 if sample else None, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id if pad_token_id is not None else eos_token_id, suppress_tokens=suppress or None,
    )


def left_pad(prompt_ids: Any, prompt_mask: Any, pad_id: int) -> tuple[Any, Any]:
    """Right-padded prompts `(B, P)` moved to the right edge (what batched generation needs), cut to the
    longest prompt: `(B, P')` ids and mask."""
    import torch

    lengths = prompt_mask.long().sum(1)
    width = max(1, int(lengths.max()))
    ids = torch.full((prompt_ids.shape[0], width), pad_id, dtype=torch.long, device=prompt_ids.device)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths.tolist()):
        if n:
            ids[row, width - n:] = prompt_ids[row, :n]
            mask[row, width - n:] = 1
    return ids, mask


def answer_lengths(generated: Any, eos_token_id: int | None) -> Any:
    """Tokens of each generated row `(B, G)` that belong to the answer: up to and including the first
    end-of-sequence token (the rest is padding after a finished row), all G when there is none. `(B,)`."""
    import torch

    width = generated.shape[1]
    if eos_token_id is None:
        return torch.full((generated.shape[0],), width, dtype=torch.long, device=generated.device)
    is_eos = generated == eos_token_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(is_eos[:, 0], width,
                                                                                  dtype=torch.long))
    return torch.clamp(first + 1, max=width)


def sample_answers(model: Any, prompt_ids: Any, prompt_mask: Any, *, max_new_tokens: int, temperature: float,
                   eos_token_id: int | None, pad_token_id: int | None, vocab_size: int | None = None,
                   ) -> dict[str, Any]:
    """The model's answers to right-padded prompts `prompt_ids`, `prompt_mask (B, P)` as a right-padded batch:
    `input_ids`, `attention_mask (B, L)` (prompt + answer) and `loss_mask (B, L-1)`, True at position t when
    token t + 1 was sampled (the end-of-sequence token counts: the student learns to stop as the teacher
    would; padding after it does not). The model is put in eval mode to sample (no dropout) and back.
    `vocab_size`: the tokenizer's size; ids past it (a padded embedding's extra rows) are never sampled."""
    import torch

    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    left_ids, left_mask = left_pad(prompt_ids, prompt_mask, pad)
    width = model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config") else \
        model.config.vocab_size
    suppress = list(range(vocab_size, width)) if vocab_size is not None and width > vocab_size else None
    config = generation_config(max_new_tokens, temperature, eos_token_id, pad, suppress)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sequences = model.generate(input_ids=left_ids, attention_mask=left_mask, generation_config=config)
    finally:
        model.train(was_training)
    generated = sequences[:, left_ids.shape[1]:]  # (B, G)
    kept = answer_lengths(generated, eos_token_id)
    prompt_lengths = left_mask.sum(1)
    lengths = prompt_lengths + kept
    total = max(2, int(lengths.max()))
    batch = prompt_ids.shape[0]
    ids = torch.full((batch, total), pad, dtype=torch.long, device=prompt_ids.device)
    mask = torch.zeros_like(ids)
    loss_mask = torch.zeros((batch, total - 1), dtype=torch.bool, device=prompt_ids.device)
    for row in range(batch):
        p, g = int(prompt_lengths[row]), int(kept[row])
        ids[row, :p] = prompt_ids[row, :p]
        ids[row, p:p + g] = generated[row, :g]
        mask[row, :p + g] = 1
        if g and p:  # position t predicts token t + 1: the answer's tokens are predicted from p - 1 on
            loss_mask[row, p - 1:p + g - 1] = True
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}
