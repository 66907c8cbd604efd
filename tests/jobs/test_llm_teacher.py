"""A causal LM labels texts by full-answer scoring: checked against a hand computation on a tiny real model."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_jobs import llm_teacher
from kubedistill_jobs.llm_teacher import LabelPrompt, PromptError

PROMPT = LabelPrompt(labels=("pos", "neg"), answers=("very good", "very bad"), user="the {text} was {labels}")


@pytest.fixture(scope="module")
def llama(tiny_models):
    from kubedistill_jobs import models

    source = str(tiny_models["llama"])
    return models.load_causal_teacher(source, None).eval(), models.load_tokenizer(source)


def _by_hand(model, tokenizer, prompt_ids: list[int], answer: list[int]) -> float:
    """log P(answer | prompt) from one plain forward pass over prompt + answer, no cache."""
    import torch

    ids = torch.as_tensor([prompt_ids + answer])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    start = len(prompt_ids)
    return float(sum(logp[start + j - 1, token] for j, token in enumerate(answer)))


def test_multi_token_answers_sharing_a_first_token_are_scored_in_full(llama):
    model, tokenizer = llama
    answers = llm_teacher.answer_ids(tokenizer, PROMPT.answers)
    assert answers[0][0] == answers[1][0] and len(answers[0]) == 3  # "very", then "good"/"bad", then [EOS]
    assert not llm_teacher.first_tokens_distinct(tokenizer, PROMPT.answers)
    scorer = llm_teacher.FullAnswerScorer(model, answers, pad_id=tokenizer.pad_token_id)
    prompt_ids = tokenizer.encode(llm_teacher.render(tokenizer, PROMPT.messages("food")), add_special_tokens=False)
    scores = scorer.score(prompt_ids)
    expected = [_by_hand(model, tokenizer, prompt_ids, a) for a in answers]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores[0] != pytest.approx(scores[1])  # the first token alone would tie them


def test_answers_of_different_lengths_are_scored_with_padding_masked(llama):
    model, tokenizer = llama
    answers = llm_teacher.answer_ids(tokenizer, ["good", "very very bad"])
    scorer = llm_teacher.FullAnswerScorer(model, answers, pad_id=tokenizer.pad_token_id)
    prompt_ids = tokenizer.encode("the weather was", add_special_tokens=False)
    expected = [_by_hand(model, tokenizer, prompt_ids, a) for a in answers]
    np.testing.assert_allclose(scorer.score(prompt_ids), expected, rtol=1e-5, atol=1e-5)


def test_a_batch_on_the_shared_prefix_scores_each_prompt_as_if_alone(llama):
    model, tokenizer = llama
    answers = llm_teacher.answer_ids(tokenizer, PROMPT.answers)
    texts = ["food", "the cold dark weather was very", "a lovely warm day", "sad"]  # 1 to 6 tokens: padded
    prompts = [tokenizer.encode(llm_teacher.render(tokenizer, PROMPT.messages(t)), add_special_tokens=False)
               for t in texts]
    prefix = llm_teacher.common_prefix(prompts)
    assert prefix == tokenizer.encode("the", add_special_tokens=False)  # the template's words before {text}
    scorer = llm_teacher.FullAnswerScorer(model, answers, pad_id=tokenizer.pad_token_id, prefix=prefix)
    expected = [[_by_hand(model, tokenizer, ids, a) for a in answers] for ids in prompts]
    np.testing.assert_allclose(scorer.score_batch(prompts), expected, rtol=1e-5, atol=1e-5)
    # a prompt without the prefix runs in full, in the same batch
    other = tokenizer.encode("a day was", add_special_tokens=False)
    np.testing.assert_allclose(scorer.score_batch([other, prompts[0]]),
                               [[_by_hand(model, tokenizer, other, a) for a in answers], expected[0]],
                               rtol=1e-5, atol=1e-5)
    assert llm_teacher.common_prefix([[1, 2, 3], [1, 2]]) == [1]  # each keeps a token of its own


def test_label_texts_normalises_and_calibrates(llama):
    model, tokenizer = llama
    texts = ["good food", "bad day", "the weather"]
    out = llm_teacher.label_texts(model, tokenizer, PROMPT, texts, max_tokens=16)
    assert out.raw.shape == (3, 2) and out.prior is not None and out.prior.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.exp(out.raw).sum(1), 1.0)
    np.testing.assert_allclose(np.exp(out.calibrated).sum(1), 1.0)
    # calibrated ∝ p / prior, row by row
    ratio = np.exp(out.raw) / out.prior
    np.testing.assert_allclose(np.exp(out.calibrated), ratio / ratio.sum(1, keepdims=True), rtol=1e-9)
    # the content-free texts, calibrated, come out close to uniform
    neutral = llm_teacher.label_texts(model, tokenizer, PROMPT, list(llm_teacher.CONTENT_FREE), max_tokens=16)
    np.testing.assert_allclose(np.exp(neutral.calibrated).mean(0), [0.5, 0.5], atol=0.05)
    assert (out.prompt_tokens > 0).all()


def test_chat_template_renders_few_shot_turns_and_opens_the_answer(llama):
    _, tokenizer = llama
    prompt = LabelPrompt(labels=("pos", "neg"), answers=("good", "bad"), user="{text}", system="say {labels}",
                         few_shot=(("lovely day", "pos"),))
    messages = prompt.messages("cold food")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "say good, bad" and messages[2]["content"] == "good"
    templated = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    templated.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    text = llm_teacher.render(templated, messages)
    assert text.endswith("<user>cold food<assistant>")


def test_answers_that_tokenise_the_same_are_refused(llama):
    _, tokenizer = llama
    with pytest.raises(PromptError, match=r"teacher\.prompt\.verbalizer"):
        llm_teacher.answer_ids(tokenizer, ["good", "good "])
    with pytest.raises(PromptError, match="no tokens"):
        llm_teacher.answer_ids(tokenizer, ["good", "   "])


def test_template_hash_follows_the_prompt():
    other = LabelPrompt(labels=PROMPT.labels, answers=PROMPT.answers, user="{text}?")
    assert PROMPT.template_hash != other.template_hash
    assert PROMPT.template_hash == LabelPrompt(**PROMPT.__dict__).template_hash
