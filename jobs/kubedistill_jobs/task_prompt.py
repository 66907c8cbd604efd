"""Causal-LM prompts (`task.prompt`): each row's text put into a chat turn and rendered with the model's chat
template up to where the assistant's answer starts, cut so that the answer still fits in task.maxLength.

The prompt is what the teacher answers, what the student learns to answer and what the evaluation asks all
three models, so it is rendered once, by the data stage, and stored as the row's text.
"""

from __future__ import annotations

from typing import Any

from kubedistill.api.distillationjob import DistillationJobSpec, TaskPrompt
from kubedistill.errors import InputError


def answer_tokens(spec: DistillationJobSpec) -> int:
    """Tokens kept free for the answer: distillation.sequenceLevel's or the endpoint's maxNewTokens."""
    if spec.distillation.sequence_level is not None:
        return spec.distillation.sequence_level.max_new_tokens
    if spec.teacher.endpoint is not None:
        return spec.teacher.endpoint.max_new_tokens
    return 0


def render(tokenizer: Any, prompt: TaskPrompt, text: str) -> str:
    """One prompt as text: the chat template with an empty system turn unless `prompt.system` is set (a
    template's default system prompt is text no model was trained on); `User: ...\\nAssistant:` for a
    tokenizer without a chat template."""
    user = prompt.user.replace("{text}", text)
    if not getattr(tokenizer, "chat_template", None):
        return (f"{prompt.system}\n" if prompt.system else "") + f"User: {user}\nAssistant:"
    messages = [{"role": "system", "content": prompt.system or ""}, {"role": "user", "content": user}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _length(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def render_all(tokenizer: Any, prompt: TaskPrompt, texts: list[str], budget: int) -> tuple[list[str], int]:
    """Every text rendered into a prompt of at most `budget` tokens (a longer text is cut at a token boundary;
    the template around it is kept whole), and how many texts were cut. Raises InputError when the template
    alone leaves no room for the text."""
    overhead = _length(tokenizer, render(tokenizer, prompt, ""))
    if budget - overhead < 1:
        raise InputError(
            f"task.maxLength: the prompt template alone takes {overhead} tokens, and prompts may take {budget} "
            "(task.maxLength less the answer's maxNewTokens): raise task.maxLength, shorten task.prompt, or "
            "lower maxNewTokens"
        )
    out, cut = [], 0
    for text in texts:
        rendered = render(tokenizer, prompt, text)
        if _length(tokenizer, rendered) > budget:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            keep = budget - overhead
            while True:  # token merges at the seams may cost a token or two more than the count
                rendered = render(tokenizer, prompt, tokenizer.decode(ids[:keep]).strip())
                over = _length(tokenizer, rendered) - budget
                if over <= 0 or keep <= 1:
                    break
                keep -= over
            cut += 1
        out.append(rendered)
    return out, cut
