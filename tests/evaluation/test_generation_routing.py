"""The generation frontier's pieces: token F1, prompt splitting, and the cascade over answer confidences."""

from __future__ import annotations

import math

import pytest
from kubedistill_jobs.generation_eval import Answer, generation_routing, split_prompts, token_f1

from kubedistill.confidence import answer_confidence


def test_token_f1_identities():
    assert token_f1([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_f1([1, 2], [3, 4]) == 0.0
    assert token_f1([], []) == 1.0 and token_f1([1], []) == 0.0
    assert token_f1([1, 2, 3, 4], [1, 2]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1([1, 1, 2], [1, 2, 2]) == token_f1([1, 2, 2], [1, 1, 2])  # symmetric


def test_split_prompts_halves_and_skips_short_texts():
    pairs = split_prompts([[1, 2, 3, 4, 5, 6], [7, 8], list(range(100))], max_length=10)
    assert pairs == [([1, 2, 3], [4, 5, 6]), (list(range(5)), list(range(5, 10)))]


def test_split_prompts_never_cut_a_character_in_two():
    """Byte tokens (as byte-level BPE has them): the half falls inside 'é' (two bytes), and the cut moves to
    the token before, so the prompt decodes to whole characters."""
    ids = list("abcdéfghi".encode())  # 10 byte tokens: a b c d 0xC3 0xA9 f g h i

    def decode(tokens):
        return bytes(tokens).decode("utf-8", errors="replace")

    assert decode(ids[:5]).endswith("\ufffd")  # where the plain half cuts
    (prompt, rest), = split_prompts([ids], max_length=20, decode=decode)
    assert decode(prompt) == "abcd" and decode(rest) == "éfghi"
    assert split_prompts([ids], max_length=20)[0][0] == ids[:5]  # without decode: the plain half


def test_answer_confidence_signals():
    lp = [math.log(0.9), math.log(0.5), math.log(0.99)] * 4
    assert answer_confidence(lp, "min-token-probability") == pytest.approx(0.5)
    assert answer_confidence(lp, "token-quantile") == pytest.approx(0.5)  # 0.1 quantile of 12: the lowest
    assert answer_confidence(lp, "mean-logprob") == pytest.approx((0.9 * 0.5 * 0.99) ** (1 / 3))
    assert answer_confidence([], "token-quantile") == 1.0
    with pytest.raises(ValueError, match="not one for generated answers"):
        answer_confidence(lp, "max-probability")


def test_cascade_escalates_the_unsure_answers_to_the_teacher():
    sure, unsure = [math.log(0.95)] * 5, [math.log(0.2)] * 5
    student = [Answer([1, 2, 3], sure), Answer([9, 9, 9], unsure), Answer([4, 5], sure), Answer([8, 8], unsure)]
    teacher = [Answer([1, 2, 3], sure), Answer([6, 7], sure), Answer([4, 5], sure), Answer([1, 1], sure)]
    references = [[1, 2, 3], [6, 7], [4, 5], [1, 1]]
    routing, frontiers = generation_routing(student, teacher, references, target=1.0)
    # The student is right exactly when it is sure: escalating the two unsure answers reaches the teacher.
    # The lowest threshold that does: the sure answers' confidence (escalation is strictly below it).
    assert routing.recommended_threshold == pytest.approx(0.95)
    assert routing.recommended.accuracy == 1.0 and routing.recommended.escalation_rate == 0.5
    assert routing.student_accuracy == 0.5 and routing.teacher_accuracy == 1.0
    assert set(frontiers) == {"token-quantile", "min-token-probability", "mean-logprob"}
    # Without references the teacher's answers are the reference.
    agreement, _ = generation_routing(student, teacher, None, target=1.0)
    assert agreement.teacher_accuracy == 1.0 and agreement.reference == "the teacher's answers"


def test_the_frontier_can_measure_the_primary_metric_on_the_answers_text():
    """ROUGE-L of the decoded answers instead of token F1: a student answer with the reference's words in
    another order scores low on ROUGE-L (longest common subsequence) yet full on token F1; the frontier then
    escalates it."""
    from kubedistill_jobs.generation_eval import answer_quality

    sure = [math.log(0.95)] * 3
    student = [Answer([1, 2, 3], sure), Answer([3, 2, 1], [math.log(0.5)] * 3)]
    teacher = [Answer([1, 2, 3], sure), Answer([1, 2, 3], sure)]
    texts = {"student": ["rates rise again", "again rise rates"], "teacher": ["rates rise again"] * 2}
    references = ["rates rise again", "rates rise again"]
    by_f1, _ = generation_routing(student, teacher, [[1, 2, 3], [1, 2, 3]], target=1.0)
    assert by_f1.student_accuracy == 1.0  # token F1 cannot tell the orders apart
    s_quality, t_quality = answer_quality(texts["student"], texts["teacher"], references, "rouge_l")
    assert s_quality[0] == 1.0 and s_quality[1] == pytest.approx(1 / 3) and list(t_quality) == [1.0, 1.0]
    by_rouge, _ = generation_routing(student, teacher, None, target=1.0,
                                     quality=(s_quality, t_quality, "dataset.referenceField (rouge_l)"))
    assert by_rouge.student_accuracy == pytest.approx(2 / 3) and by_rouge.teacher_accuracy == 1.0
    assert by_rouge.reference == "dataset.referenceField (rouge_l)"
    assert by_rouge.recommended.escalation_rate == 0.5  # the unsure, reordered answer goes to the teacher
    agreement = answer_quality(texts["student"], texts["teacher"], None, "exact_match")
    assert list(agreement[0]) == [1.0, 0.0] and list(agreement[1]) == [1.0, 1.0]
