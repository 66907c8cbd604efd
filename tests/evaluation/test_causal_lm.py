"""A causal-LM job: int4 weight-only student, perplexities, inverse-ratio retention, token-level frontier."""

from __future__ import annotations

import json
import random

import pytest
from kubedistill_jobs.compress import compress
from kubedistill_jobs.evaluate import evaluate
from kubedistill_jobs.export import export

from kubedistill.artifacts import OutputLayout

from .conftest import WORDS, make_spec, tiny_llama, tokenizer, write_jsonl


@pytest.mark.slow
def _write_split(layout: OutputLayout, count: int, longest: int, references: bool = False) -> list[dict[str, str]]:
    """`count` random sentences of the tiny vocabulary (5 to `longest` words; with a 3-word reference each),
    half train and half eval, as the data stage writes them."""
    rng = random.Random(0)
    words = " ".join(WORDS.values()).split()
    rows = []
    for _ in range(count):
        row = {"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, longest)))}
        if references:
            row["reference"] = " ".join(rng.choice(words) for _ in range(3))
        rows.append(row)
    write_jsonl(layout.data / "train.jsonl", rows[:count // 2])
    write_jsonl(layout.data / "eval.jsonl", rows[count // 2:])
    return rows


def test_causal_lm_pipeline(tmp_path, fast_latency):
    layout = OutputLayout(tmp_path)
    tok = tokenizer()
    tiny_llama(tok.vocab_size, seed=1).save_pretrained(layout.teacher)
    tiny_llama(tok.vocab_size, seed=2).save_pretrained(layout.student)
    for folder in (layout.teacher, layout.student):
        tok.save_pretrained(folder)
    _write_split(layout, 24, longest=25)
    spec = make_spec(task={"type": "causal-lm", "maxLength": 32}, compression={"quantization": "int4"},
                     evaluation={"gate": {"minRetention": 0.5},
                                 "economics": {"teacherPricePerMillionInputTokens": 1.0,
                                               "teacherPricePerMillionOutputTokens": 2.0,
                                               "outputTokensPerRequest": 16, "studentPricePerHour": 0.5}})
    compress(spec, layout)
    assert (layout.onnx / "student.int4.onnx").is_file()
    report = evaluate(spec, layout, "lm-1", settings=fast_latency)
    doc = json.loads(layout.report_json.read_text())
    for name in ("teacher", "student", "student_quantized"):
        assert doc[name]["metrics"]["perplexity"] > 1
    assert report.retention == pytest.approx(
        report.teacher.metrics["perplexity"] / report.student_quantized.metrics["perplexity"])
    assert report.perplexity_scope == "texts"  # no references: every token of the held-out texts
    assert report.routing is not None and report.routing.recommended_threshold is not None
    assert report.gate.passed == (report.retention >= 0.5)
    generation = report.generation_routing
    assert generation is not None and generation.signal == "token-quantile"
    assert set(generation.signals) == {"token-quantile", "min-token-probability", "mean-logprob"}
    rates = [p.escalation_rate for p in generation.frontier]
    assert rates == sorted(rates) and rates[0] == 0.0 and rates[-1] == 1.0
    econ = report.economics  # an API-priced teacher: its cost is the tokens, the student's is its throughput
    assert econ is not None
    tokens = econ.measured["input_tokens_per_request"]
    assert econ.teacher_per_million_requests.value == pytest.approx(tokens * 1.0 + 16 * 2.0)
    student_rate = report.student_quantized.throughput["batch32"]
    assert econ.student_per_million_requests.value == pytest.approx(
        0.5 / (3600 * student_rate) * (tokens + 16) / tokens * 1e6)
    assert econ.measured["escalation_rate"] == generation.recommended.escalation_rate
    assert econ.cost_ratio.value is not None and econ.payback_days.missing
    manifest = export(spec, layout, report)
    assert manifest.task == "causal-lm" and manifest.labels is None
    assert manifest.student.kind == "generation" and manifest.student.precision == "int4"
    assert manifest.confidence_signal == "token-quantile"
    assert manifest.recommended_threshold == generation.recommended_threshold
    assert not (layout.model_repository / "student" / "labels.txt").exists()
    assert (layout.model_repository / "teacher" / "1" / "genai" / "genai_config.json").is_file()
    # The served INT4 build: 4-bit blocks everywhere but the output layer, at 8 bits.
    import onnx

    graph = onnx.load(str(layout.model_repository / "student" / "1" / "genai" / "model.onnx"),
                      load_external_data=False).graph
    bits = {n.output[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop("logits") == 8 and set(bits.values()) == {4}
    assert "GatherBlockQuantized" in {n.op_type for n in graph.node}
    # The float16 safetensors beside each generation model, for Triton's vLLM backend.
    for model in (manifest.student, manifest.teacher):
        assert model is not None and model.weights == f"{model.name}/hf"
        assert list((layout.model_repository / model.weights).glob("*.safetensors"))
        assert json.loads((layout.model_repository / model.weights / "config.json").read_text())["dtype"] == "float16"


@pytest.mark.slow
def test_a_student_padded_beyond_the_tokenizer_is_scored_over_the_tokenizers_ids(tmp_path, fast_latency):
    import torch

    layout = OutputLayout(tmp_path)
    tok = tokenizer()
    size = len(tok)
    tiny_llama(size, seed=1).save_pretrained(layout.teacher)
    student = tiny_llama(size + 64, seed=2)  # padded rows past the tokenizer: no token ever has those ids
    with torch.no_grad():
        student.lm_head.weight[size:] = 5.0 * student.lm_head.weight[:size].abs().max()
    student.save_pretrained(layout.student)
    for folder in (layout.teacher, layout.student):
        tok.save_pretrained(folder)
    _write_split(layout, 16, longest=25)
    spec = make_spec(task={"type": "causal-lm", "maxLength": 32}, compression={"quantization": "none"},
                     evaluation={"gate": {"minRetention": None}, "metrics": ["agreement"]})
    compress(spec, layout)
    report = evaluate(spec, layout, "lm-1", settings=fast_latency)
    # counted, the padded rows would take nearly all the mass: a perplexity far above the vocabulary's size
    assert report.student.metrics["perplexity"] < 2 * size


@pytest.mark.slow
def test_generation_metrics_against_references_drive_retention(tmp_path, fast_latency):
    layout = OutputLayout(tmp_path)
    tok = tokenizer()
    teacher = tiny_llama(tok.vocab_size, seed=1)
    teacher.save_pretrained(layout.teacher)
    teacher.save_pretrained(layout.student)  # the fp32 student is the teacher: its answers are the teacher's
    for folder in (layout.teacher, layout.student):
        tok.save_pretrained(folder)
    rows = _write_split(layout, 16, longest=12, references=True)
    spec = make_spec(task={"type": "causal-lm", "maxLength": 32, "prompt": {"user": "{text}"}},
                     dataset={"uri": "/data/train.jsonl", "referenceField": "reference", "labelField": None},
                     distillation={"sequenceLevel": {"maxNewTokens": 6}}, compression={"quantization": "int4"},
                     evaluation={"metrics": ["chrf", "rouge_l", "perplexity"], "gate": {"minRetention": None}})
    compress(spec, layout)
    report = evaluate(spec, layout, "lm-1", settings=fast_latency)
    assert report.primary == report.primary_metric == "chrf"
    teacher, student, quantized = report.teacher.metrics, report.student.metrics, report.student_quantized.metrics
    for metrics in (teacher, student, quantized):
        assert {"chrf", "rouge_l", "perplexity"} <= set(metrics) and 0 <= metrics["chrf"] <= 1
    assert student["teacher_rouge_l"] == 1.0 and student["chrf"] == teacher["chrf"]
    assert report.retention == pytest.approx(quantized["chrf"] / max(teacher["chrf"], 1e-12))
    found = report.generation
    assert found is not None and found.prompts == 8 and found.max_new_tokens == 6
    assert found.reference == "dataset.referenceField" and found.precision["student_quantized"] == "int4"
    assert set(found.tokens_per_second) == {"teacher", "student", "student_quantized"}
    assert [e.reference for e in found.examples] == [r["reference"] for r in rows[8:11]]
    assert found.examples[0].answers["student"] == found.examples[0].answers["teacher"]
    assert "## Generation" in layout.report_md.read_text()
    # perplexity is the task's: the references' tokens, each given its prompt, by hand with the PyTorch teacher
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(layout.teacher).eval()
    assert report.perplexity_scope == "answers"
    assert "Perplexity is over the reference answers' tokens" in layout.report_md.read_text()
    nll, count, scored = 0.0, 0, 0
    for row in rows[8:]:
        prompt = tok(row["text"])["input_ids"]
        ids = prompt + tok(row["reference"], add_special_tokens=False)["input_ids"]
        if len(ids) > 32:  # the whole reference must fit after the prompt (for every model: one tokenizer here)
            continue
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        nll -= sum(float(logprobs[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))
        count, scored = count + len(ids) - len(prompt), scored + 1
    assert count > 0 and teacher["perplexity"] == pytest.approx(float(np.exp(nll / count)), rel=1e-4)
    assert report.perplexity_rows == scored
    # references without task.prompt: the texts are not prompts, so perplexity stays over every token of them
    plain = spec.model_copy(update={"task": spec.task.model_copy(update={"prompt": None})})
    assert evaluate(plain, layout, "lm-2", settings=fast_latency).perplexity_scope == "texts"
    report = evaluate(spec, layout, "lm-1", settings=fast_latency)  # the report of the job as it was
    found = report.generation
    assert found is not None
    # latency was not listed: the status and the run's summary give the generation speedup, no "unknown" one
    from types import SimpleNamespace

    from kubedistill_jobs.cli import print_summary
    from rich.console import Console

    from kubedistill.report import job_results

    results = job_results(report, "file:///out")
    assert results.speedup is None and results.generation_speedup == round(found.speedup, 2) > 0
    console = Console(record=True, width=300)
    print_summary(console, SimpleNamespace(stages={}, report=report), layout.root)
    shown = console.export_text()
    assert f"generation {found.speedup:.2f}x the teacher's tokens/s" in shown and "speedup unknown" not in shown


def test_only_rows_whose_reference_fits_for_every_model_are_scored():
    """A model that reads the prompt in more tokens would see less of the reference: such rows are left out for
    all models, so that every model is scored on the same span."""
    from kubedistill_jobs.quality import answers_fit

    class Words:  # one token per word
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": list(range(len(text.split()) + (1 if add_special_tokens else 0)))}

    class Halves(Words):  # two tokens per word: a trimmed vocabulary splitting text it never saw
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": Words()(text, add_special_tokens)["input_ids"] * 2}

    prompts, answers = ["a b c", "a b c d e f", "a"], ["x y", "x", "x y z w"]
    assert answers_fit([Words()], prompts, answers, 8) == [True, True, True]
    assert answers_fit([Words(), Halves()], prompts, answers, 8) == [False, False, False]
    assert answers_fit([Words(), Halves()], prompts, answers, 12) == [True, False, True]
