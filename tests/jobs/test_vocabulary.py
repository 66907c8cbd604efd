"""Vocabulary trimming (student.fromTeacher.vocabulary corpus): the trimmed tokenizer splits the corpus exactly as
the teacher's does, still covers any text, and the teacher's ids, top-k candidates and embedding rows map onto
it. A byte-level BPE trained here, and tiny Llamas from configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kubedistill_jobs import losses
from kubedistill_jobs.vocabulary import (
    DROPPED_LOGPROB,
    VocabularyError,
    map_topk,
    to_student_ids,
    trim_embeddings,
    trim_tokenizer_json,
    trimmed_tokenizer,
    vocabulary_map,
)

CORPUS = [
    "Shares in the carmaker rose sharply after the merger talks.",
    "The minister said the budget would cut taxes for families.",
    "Rain stopped play as the home side chased a record total.",
    "A new phone chip promises longer battery life.",
] * 3
ELSEWHERE = [
    "Quantum chromodynamics describes gluons binding quarks.",
    "Photosynthesis converts sunlight into chemical energy!",
    "Zebras, xylophones and jazz: a quirky vocabulary.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE (GPT-2 / SmolLM2 style) trained on `texts`, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def teacher_tokenizer():
    return bpe_tokenizer(CORPUS + ELSEWHERE * 4)


def _used(tokenizer, texts):
    return sorted({i for t in texts for i in tokenizer(t)["input_ids"]})


def test_the_corpus_tokenizes_exactly_as_the_teachers_and_other_text_still_does(teacher_tokenizer):
    student, kept = trimmed_tokenizer(teacher_tokenizer, _used(teacher_tokenizer, CORPUS))
    assert len(student) == len(kept) < len(teacher_tokenizer)
    assert (np.diff(kept) > 0).all()
    vocab_map = vocabulary_map(student, teacher_tokenizer)
    assert vocab_map is not None
    for text in CORPUS:
        teacher_ids = teacher_tokenizer(text)["input_ids"]
        assert to_student_ids(teacher_ids, vocab_map).tolist() == student(text)["input_ids"]
    for text in ELSEWHERE:  # more, smaller pieces, the same text back
        ids = student(text)["input_ids"]
        assert len(ids) > len(teacher_tokenizer(text)["input_ids"])
        assert student.decode(ids) == text
        assert (kept[ids] == [teacher_tokenizer.convert_tokens_to_ids(t) for t in student.convert_ids_to_tokens(ids)]
                ).all()
    # special tokens, and the ids the tokenizer's settings name, survive
    for token in SPECIALS:
        assert teacher_tokenizer.convert_tokens_to_ids(token) in kept
    assert student.eos_token == "<|im_end|>" and student.pad_token_id == student.eos_token_id
    assert student.convert_ids_to_tokens(student.eos_token_id) == "<|im_end|>"


def test_the_map_marks_dropped_tokens_and_refuses_a_foreign_vocabulary(teacher_tokenizer):
    student, kept = trimmed_tokenizer(teacher_tokenizer, _used(teacher_tokenizer, CORPUS))
    vocab_map = vocabulary_map(student, teacher_tokenizer)
    assert vocab_map is not None
    assert (vocab_map[kept] == np.arange(len(kept))).all()
    assert (np.delete(vocab_map, kept) == -1).all()
    assert vocabulary_map(teacher_tokenizer, teacher_tokenizer) is None
    other = bpe_tokenizer(ELSEWHERE, vocab_size=300)
    with pytest.raises(VocabularyError, match="not a subset"):
        vocabulary_map(other, student)


def llama3_style_tokenizer(texts: list[str]):
    """A byte-level BPE whose special tokens sit after its vocabulary (not in the BPE model's vocab), with a
    post-processor that prepends the beginning-of-text token inside a Sequence, as Llama 3's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.add_special_tokens(["<|begin_of_text|>", "<|eot_id|>", "<|pad|>"])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>")


def test_special_tokens_after_the_vocabulary_and_a_nested_post_processor_are_remapped():
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher = llama3_style_tokenizer(CORPUS + ELSEWHERE * 4)
    doc = json.loads(teacher.backend_tokenizer.to_str())
    assert teacher.bos_token_id not in doc["model"]["vocab"].values()  # outside the BPE model's vocabulary
    student, kept = trimmed_tokenizer(teacher, _used(teacher, CORPUS))
    vocab_map = vocabulary_map(student, teacher)
    assert vocab_map is not None
    for text in CORPUS:
        ids = teacher(text)["input_ids"]
        assert ids[0] == teacher.bos_token_id
        assert to_student_ids(ids, vocab_map).tolist() == student(text)["input_ids"]
    assert student(CORPUS[0])["input_ids"][0] == student.bos_token_id < len(student)
    assert [student.convert_ids_to_tokens(getattr(student, f"{t}_token_id")) for t in ("bos", "eos", "pad")] == \
        ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>"]
    # the model's config names the special tokens by the student's ids, and rebuilds from it
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(teacher), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, bos_token_id=teacher.bos_token_id,
        eos_token_id=[teacher.eos_token_id, teacher.pad_token_id], pad_token_id=teacher.pad_token_id))
    trim_embeddings(model, kept)
    assert model.config.bos_token_id == student.bos_token_id
    assert model.config.eos_token_id == [student.eos_token_id, student.pad_token_id]
    assert model.config.pad_token_id == student.pad_token_id < len(kept)
    rebuilt = LlamaForCausalLM(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.get_input_embeddings().padding_idx == student.pad_token_id


def test_a_position_with_no_kept_candidate_learns_the_next_token():
    from kubedistill_jobs.inputs import trim_vocabulary

    teacher = bpe_tokenizer(CORPUS + ELSEWHERE * 4)
    encoded = teacher(CORPUS[:2], padding="max_length", max_length=16, truncation=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int8)
    foreign = [i for i in range(len(teacher)) if i not in set(ids[mask.astype(bool)].tolist())
               and len(teacher.convert_ids_to_tokens(i)) > 3][:40]
    k = 4
    indices = np.broadcast_to(np.asarray(ids)[..., None], (*ids.shape, k)).copy()  # candidates: the token itself
    indices[..., 1:] = foreign[:k - 1]
    indices[0, 3] = foreign[10:10 + k]  # position 3 of row 0: only tokens the trimmed vocabulary lacks
    values = np.log(np.full((*ids.shape, k), 1 / (k + 1), dtype=np.float32)).astype(np.float16)
    arrays, trimmed = trim_vocabulary(teacher, {"input_ids": ids, "attention_mask": mask, "topk_values": values,
                                                "topk_indices": indices.astype(np.int32)})
    record = trimmed.record()
    assert record["positions_one_hot"] == 1
    # counted over the k candidates of each position with a next token, each of probability 1/(k + 1)
    vocab_map = vocabulary_map(trimmed.tokenizer, teacher)
    assert vocab_map is not None
    counted = mask[:, 1:].astype(bool)
    lacks = int((vocab_map[indices[:, :-1]] < 0)[counted].sum())
    assert record["dropped_candidates"] == lacks >= k  # row 0's position 3 at least
    assert record["dropped_candidate_share"] == pytest.approx(lacks / (counted.sum() * k), abs=1e-6)
    assert record["dropped_probability"] == pytest.approx(lacks / (k + 1) / counted.sum(), rel=1e-3)
    assert arrays["topk_indices"][0, 3].tolist() == [arrays["input_ids"][0, 4]] * k
    assert arrays["topk_values"][0, 3, 0] == 0 and (arrays["topk_values"][0, 3, 1:] == np.float16(DROPPED_LOGPROB)
                                                     ).all()
    assert (arrays["input_ids"][mask.astype(bool)] == vocab_map[ids[mask.astype(bool)]]).all()


@pytest.mark.parametrize("prompt", ["one-hot", "distribution"])
@pytest.mark.parametrize("completion_only", [True, False])
def test_the_record_counts_the_positions_the_loss_uses(completion_only, prompt):
    """Answers with a distribution over k candidates, prompts with one too (a local teacher's prefill) or a one-hot
    on the next token (an endpoint teacher's). A one-hot is never a candidate; with a completion-only loss the
    prompt's positions are not counted at all."""
    from kubedistill_jobs.inputs import trim_vocabulary

    teacher = bpe_tokenizer(CORPUS + ELSEWHERE * 4)
    encoded = teacher(CORPUS[:2], padding="max_length", max_length=16, truncation=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int8)
    _, kept = trimmed_tokenizer(teacher, np.unique(ids[mask.astype(bool)]))
    foreign = [i for i in range(len(teacher)) if i not in set(kept.tolist())][:8]  # the trimmed vocabulary lacks
    k, answer_start = 4, np.asarray([5, 7], dtype=np.int32)
    following = np.pad(ids[:, 1:], ((0, 0), (0, 1)))
    indices = np.broadcast_to(following[..., None], (*ids.shape, k)).copy()
    values = np.full((*ids.shape, k), DROPPED_LOGPROB, dtype=np.float16)
    values[..., 0] = 0
    has_next = np.pad(mask[:, 1:], ((0, 0), (0, 1))).astype(bool)
    in_answer = np.arange(ids.shape[1])[None, :] >= answer_start[:, None] - 1
    distributed = in_answer if prompt == "one-hot" else np.ones_like(in_answer)
    indices[distributed, 1:] = foreign[:k - 1]  # the next token and k - 1 tokens the training text never uses
    values[distributed] = np.log([0.7, 0.1, 0.1, 0.05]).astype(np.float16)
    arrays = {"input_ids": ids, "attention_mask": mask, "topk_values": values,
              "topk_indices": indices.astype(np.int32), "answer_start": answer_start}
    _, trimmed = trim_vocabulary(teacher, arrays, completion_only=completion_only)
    record = trimmed.record()
    counted = int((has_next & (in_answer if completion_only else distributed)).sum())
    assert trimmed.candidates == counted * k
    assert record["dropped_candidates"] == counted * (k - 1)
    assert record["dropped_probability"] == pytest.approx(0.25, rel=1e-2)  # per position with a distribution
    assert record["positions_one_hot"] == 0


@pytest.mark.parametrize("loss", ["reverse-kl", "jsd", "forward-kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_dropped_candidates_filler_id_counts_once_in_every_loss(loss, temperature):
    """A dropped candidate becomes a copy of a kept id at about -1e4: the loss is the one over the kept
    candidates alone, whichever slot the copy lands in."""
    rng = np.random.default_rng(1)
    student = torch.as_tensor(rng.normal(size=(2, 3, 50)), dtype=torch.float32)
    kept_values = torch.log_softmax(torch.as_tensor(rng.normal(size=(2, 3, 3))), -1).float() - 0.5
    kept_ids = torch.as_tensor(np.stack([rng.permutation(50)[:3] for _ in range(6)]).reshape(2, 3, 3))
    # the dropped slot comes first (the teacher's top candidate was dropped) and copies the last kept id
    values = torch.cat([torch.full((2, 3, 1), DROPPED_LOGPROB), kept_values], -1)
    ids = torch.cat([kept_ids[..., 2:], kept_ids], -1)
    with_copy = losses.soft_loss(student, values, teacher_topk_indices=ids, loss=loss, temperature=temperature)
    alone = losses.soft_loss(student, kept_values, teacher_topk_indices=kept_ids, loss=loss, temperature=temperature)
    assert with_copy.item() == pytest.approx(alone.item(), rel=1e-4, abs=1e-6)


def test_a_tokenizer_that_is_not_bpe_is_refused(teacher_tokenizer):
    doc = json.loads(teacher_tokenizer.backend_tokenizer.to_str())
    doc["model"]["type"] = "WordPiece"
    with pytest.raises(VocabularyError, match="needs a BPE tokenizer"):
        trim_tokenizer_json(json.dumps(doc), [5])
    with pytest.raises(VocabularyError, match="not in the tokenizer's vocabulary"):
        trim_tokenizer_json(teacher_tokenizer.backend_tokenizer.to_str(), [10**6])


def test_dropped_candidates_move_to_the_remaining_bucket(teacher_tokenizer):
    """The mapped top-k gives the loss the teacher's distribution coarsened over the kept candidates and one
    bucket holding everything else, the dropped candidates' mass included."""
    student, kept = trimmed_tokenizer(teacher_tokenizer, _used(teacher_tokenizer, CORPUS))
    vocab_map = vocabulary_map(student, teacher_tokenizer)
    assert vocab_map is not None
    rng = np.random.default_rng(0)
    v_teacher, k = len(teacher_tokenizer), 8
    teacher_logprobs = torch.log_softmax(torch.as_tensor(rng.normal(size=(3, 5, v_teacher)) * 3), -1)
    top = teacher_logprobs.topk(k, -1)
    values, indices, dropped = map_topk(top.values.numpy().astype(np.float16), top.indices.numpy(), vocab_map)
    was_dropped = vocab_map[top.indices.numpy()] < 0
    assert (dropped == was_dropped).all() and was_dropped.any()
    assert (values[was_dropped] == np.float16(DROPPED_LOGPROB)).all()
    assert (values[~was_dropped] == top.values.numpy().astype(np.float16)[~was_dropped]).all()
    assert (indices[~was_dropped] == vocab_map[top.indices.numpy()][~was_dropped]).all()
    assert (indices >= 0).all() and (indices < len(kept)).all()
    # rows where some candidate is kept fill dropped slots with one of that row's kept ids
    for pos in zip(*np.nonzero(was_dropped.any(-1) & ~was_dropped.all(-1)), strict=True):
        assert set(indices[pos][was_dropped[pos]]) <= set(indices[pos][~was_dropped[pos]])

    student_logits = torch.as_tensor(rng.normal(size=(3, 5, len(kept))), dtype=torch.float32)
    got = losses.soft_loss(student_logits, torch.as_tensor(values), teacher_topk_indices=torch.as_tensor(indices),
                           teacher_topk_logprobs=True)
    # by hand: kept candidates (once each), and the rest of each distribution in one bucket
    q = torch.softmax(student_logits, -1)
    expected = []
    for pos in np.ndindex(3, 5):
        ids = sorted({int(vocab_map[i]) for i in top.indices[pos].tolist() if vocab_map[i] >= 0})
        p_kept = torch.tensor([float(np.float16(teacher_logprobs[pos][kept[i]].exp())) for i in ids])
        p = torch.cat([p_kept, (1 - p_kept.sum()).reshape(1)])
        s = torch.cat([q[pos][ids], (1 - q[pos][ids].sum()).reshape(1)])
        expected.append((p * (p.log() - s.log())).sum())
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=2e-3)


def test_preflight_refuses_trimming_a_tokenizer_that_is_not_bpe(teacher_tokenizer, tmp_path):
    from kubedistill_jobs.preflight import PreflightError, check_trimmable_vocabulary

    from kubedistill.api.distillationjob import DistillationJobSpec

    from .conftest import word_tokenizer

    spec = DistillationJobSpec.model_validate({
        "task": {"type": "causal-lm"}, "teacher": {"uri": "/models/t"},
        "student": {"fromTeacher": {"layers": [0], "vocabulary": "corpus"}}, "evaluation": {"metrics": ["rouge_l"]},
        "dataset": {"uri": "/data/x.jsonl"}, "output": {"uri": str(tmp_path)}})
    check_trimmable_vocabulary(spec, {"teacher_tokenizer": teacher_tokenizer})
    with pytest.raises(PreflightError, match=r"student\.fromTeacher\.vocabulary: .*WordLevel: use vocabulary teacher"):
        check_trimmable_vocabulary(spec, {"teacher_tokenizer": word_tokenizer(["a", "b"])})


@pytest.mark.parametrize("tied", [True, False])
def test_trimmed_embeddings_give_the_kept_tokens_the_same_logits(teacher_tokenizer, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(teacher_tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=64, tie_word_embeddings=tied)
    teacher = LlamaForCausalLM(config).eval()
    student_tokenizer, kept = trimmed_tokenizer(teacher_tokenizer, _used(teacher_tokenizer, CORPUS))
    student = LlamaForCausalLM(LlamaConfig(**config.to_dict())).eval()
    student.load_state_dict(teacher.state_dict())
    trim_embeddings(student, kept)
    assert student.config.vocab_size == len(kept)
    assert student.get_input_embeddings().weight.shape == (len(kept), 32)
    assert (student.get_output_embeddings().weight is student.get_input_embeddings().weight) == tied
    text = CORPUS[1]
    with torch.no_grad():
        full = teacher(torch.tensor([teacher_tokenizer(text)["input_ids"]])).logits[0]
        trimmed = student(torch.tensor([student_tokenizer(text)["input_ids"]])).logits[0]
    assert torch.allclose(trimmed, full[:, torch.as_tensor(kept)], atol=1e-5)


@pytest.mark.slow
def test_a_trimmed_student_is_trained_evaluated_and_served_in_its_own_tokens(ray_local, tmp_path, monkeypatch):
    """The whole job with student.fromTeacher.vocabulary corpus: the student's tokenizer and embedding are the
    training data's tokens; the teacher's cached soft targets are mapped onto them; every model reads the
    held-out prompts in its own tokens; the repository serves the teacher with its own tokenizer."""
    from kubedistill_jobs import generation_eval
    from kubedistill_jobs.generation_eval import timed_generate
    from kubedistill_jobs.pipeline import Pipeline
    from kubedistill_jobs.storage import resolve_output
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubedistill.api.distillationjob import DistillationJob
    from kubedistill.artifacts import OutputLayout

    from .conftest import job_manifest, write_jsonl
    from .test_pipeline import Recorder

    rng = np.random.default_rng(0)
    words = " ".join(CORPUS).replace(".", "").split()
    rows = [{"title": " ".join(rng.choice(words, 2)), "body": " ".join(rng.choice(words, 6))} for _ in range(40)]
    tokenizer = bpe_tokenizer([r["body"] for r in rows] + ELSEWHERE * 8, vocab_size=500)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True))
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    manifest = job_manifest(
        tmp_path, tmp_path / "teacher", write_jsonl(rows, tmp_path / "articles.jsonl"),
        task={"type": "causal-lm", "maxLength": 24, "prompt": {"user": "{text} the"}},
        teacher={"adapt": {"method": "none"}},
        student={"fromTeacher": {"layers": [1], "vocabulary": "corpus"}},
        dataset={"labelField": None, "textField": "body", "referenceField": "title"},
        distillation={"topK": 8, "temperature": 1.0, "alpha": 0.5,
                      "sequenceLevel": {"n": 1, "temperature": 0, "maxNewTokens": 4, "completionOnlyLoss": False}},
        training={"maxSteps": 3, "epochs": None, "batchSize": 8},
        compression={"quantization": "int4"},
        evaluation={"metrics": ["rouge_l", "perplexity"], "gate": {"minRetention": None}},
    )
    del manifest["spec"]["task"]["labels"]
    job = DistillationJob.model_validate(manifest)
    generated: list[tuple[str, list[list[int]]]] = []

    def recording(folder, prompts, max_tokens):
        generated.append((str(folder), [list(p) for p in prompts]))
        return timed_generate(folder, prompts, max_tokens)

    monkeypatch.setattr(generation_eval, "timed_generate", recording)
    result = Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=Recorder()).run()
    layout = OutputLayout(tmp_path / "out")
    assert result.stages["evaluate"]["summary"].endswith("no gate (evaluation.gate.minRetention unset)")

    student_tokenizer = AutoTokenizer.from_pretrained(layout.student)
    teacher_tokenizer = AutoTokenizer.from_pretrained(layout.teacher)
    record = json.loads(layout.train_report.read_text())["vocabulary"]
    assert record["teacher"] == len(teacher_tokenizer) == len(tokenizer)
    assert record["student"] == len(student_tokenizer) < len(tokenizer)
    assert record["dropped_candidates"] > 0
    config = json.loads((layout.student / "config.json").read_text())
    assert config["vocab_size"] == len(student_tokenizer)
    # every cached token (prompts and the teacher's answers) has a student id
    vocab_map = vocabulary_map(student_tokenizer, teacher_tokenizer)
    assert vocab_map is not None
    ids, mask = (np.load(layout.soft_targets / f"{n}.npy") for n in ("input_ids", "attention_mask"))
    assert (vocab_map[ids[mask.astype(bool)]] >= 0).all()

    report = json.loads(layout.report_json.read_text())
    assert report["primary"] == "rouge_l" and report["generation"]["prompts"] == 10
    assert report["retention"] == pytest.approx(
        report["student_quantized"]["metrics"]["rouge_l"] / max(report["teacher"]["metrics"]["rouge_l"], 1e-12))
    # every model read the held-out prompts in its own tokens
    texts = [json.loads(line)["text"] for line in (layout.data / "eval.jsonl").read_text().splitlines()]
    asked = {Path(folder).name: prompts for folder, prompts in generated}
    assert asked["teacher"] == [teacher_tokenizer(t)["input_ids"] for t in texts]
    assert asked["student"] == asked["student-fp32"] == [student_tokenizer(t)["input_ids"] for t in texts]
    assert asked["teacher"] != asked["student"]
    serving = json.loads((layout.model_repository / "serving.json").read_text())
    assert serving["teacher_tokenizer"] == "teacher"
    served = AutoTokenizer.from_pretrained(layout.model_repository / "student")
    assert served.get_vocab() == student_tokenizer.get_vocab()
