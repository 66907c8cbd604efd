"""Generation metrics of the gap evaluation against hand computations, and the primary one driving retention."""

from __future__ import annotations

import pytest
from kubedistill_jobs import evaluate
from kubedistill_jobs.generation_eval import answer_scores, chrf, exact_match, rouge_l
from kubedistill_jobs.quality import Quality

from kubedistill.report import GenerationEval

from .conftest import make_spec


def test_rouge_l_is_the_f_measure_of_the_longest_common_word_subsequence():
    # "cat sat on mat": 4 of 6 words on both sides
    assert rouge_l("the cat sat on the mat", "a cat sat on a mat") == pytest.approx(4 / 6)
    assert rouge_l("Dollar slides", "dollar slides ahead of new year") == pytest.approx(2 * (1 * 2 / 6) / (1 + 2 / 6))
    assert rouge_l("", "anything") == 0.0


def test_chrf_averages_character_n_gram_matches_over_orders_one_to_six():
    # one character differs at the end: orders 1..6 match 6/7, 5/6, 4/5, 3/4, 2/3, 1/2 (precision = recall)
    expected = (6 / 7 + 5 / 6 + 4 / 5 + 3 / 4 + 2 / 3 + 1 / 2) / 6
    assert chrf("abcdefg", "abcdefh") == pytest.approx(expected, abs=1e-4)
    assert chrf("same text", "same text") == pytest.approx(1.0)


def test_exact_match_ignores_case_punctuation_and_spacing():
    assert exact_match("Dollar slides!", "dollar  slides") == 1.0
    assert exact_match("Dollar slides", "Dollar slid") == 0.0


def test_answer_scores_are_means_over_the_prompts():
    scores = answer_scores(["a cat sat", "Dollar slides"], ["a cat sat", "dollar slides ahead of new year"])
    assert scores["exact_match"] == 0.5
    assert scores["rouge_l"] == pytest.approx((1.0 + 2 * (2 / 6) / (1 + 2 / 6)) / 2)
    with pytest.raises(ValueError, match="as many"):
        answer_scores(["one"], [])


def test_the_first_generation_metric_listed_drives_retention():
    spec = make_spec(task={"type": "causal-lm"}, evaluation={"metrics": ["perplexity", "chrf", "rouge_l"]})
    assert spec.evaluation.generation_metric() == "chrf"
    answers = {"teacher": ["dollar slides ahead of new year", "a cat sat"],
               "student": ["dollar slides", "a cat sat"], "student_quantized": ["dollar slides", "a dog"]}
    answered = evaluate.Answered(answers, ["dollar slides ahead of new year", "a cat sat on a mat"],
                                 GenerationEval(prompts=2, max_new_tokens=8, reference="dataset.referenceField",
                                                precision={}, tokens_per_second={}))
    quality = Quality({n: {"perplexity": 10.0} for n in answers}, retention=0.5, agreement=None, frontiers={},
                      reference="held-out text")
    evaluate._add_generation_metrics(spec, quality, answered)
    teacher, quantized = quality.metrics["teacher"], quality.metrics["student_quantized"]
    assert quality.retention == pytest.approx(quantized["chrf"] / teacher["chrf"])
    assert teacher["rouge_l"] == pytest.approx((1.0 + 2 * (3 / 3 * 3 / 6) / (1 + 3 / 6)) / 2)
    # agreement with the teacher's answers: "dollar slides" vs the teacher's 6 words, "a dog" vs "a cat sat"
    assert quantized["teacher_rouge_l"] == pytest.approx(((2 * (2 / 6) / (1 + 2 / 6)) + 2 * (1 / 2 * 1 / 3) /
                                                          (1 / 2 + 1 / 3)) / 2)
    assert "teacher_rouge_l" not in teacher and teacher["perplexity"] == 10.0
