"""Causal-LM students derived from the teacher (student.fromTeacher): layers copied, feed-forward channels
kept by importance, tied embeddings kept tied, bad layer lists and widths refused naming the field."""

from __future__ import annotations

import pytest
import torch
from kubedistill_jobs import models
from kubedistill_jobs.preflight import PreflightError, check_student_layers

from kubedistill.api.distillationjob import DistillationJobSpec

HIDDEN, WIDTH, LAYERS, VOCAB = 32, 64, 4, 50


def _teacher(tied: bool = True):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=WIDTH, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def _ids(n: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


def test_every_layer_at_full_width_is_the_teacher_itself():
    teacher = _teacher()
    student = models.derive_student(teacher, list(range(LAYERS)), WIDTH).eval()
    ids = _ids()
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_chosen_layers_are_copied_and_embeddings_stay_tied(tied):
    teacher = _teacher(tied)
    student = models.derive_student(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    t_layer, s_layer = teacher.model.layers[3], student.model.layers[1]
    for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight",
                 "post_attention_layernorm.weight"):
        assert torch.equal(s_layer.get_parameter(name), t_layer.get_parameter(name)), name
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied
    embeddings = VOCAB * HIDDEN
    per_layer = sum(p.numel() for p in teacher.model.layers[0].parameters())
    expected = embeddings * (1 if tied else 2) + 2 * per_layer + HIDDEN  # + the final norm
    assert models.count_parameters(student) == expected


def test_narrower_feed_forward_blocks_keep_the_most_active_channels():
    teacher = _teacher()
    quiet = torch.arange(WIDTH) % 4 != 0  # channels 0, 4, 8, ... are the only loud ones
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.up_proj.weight[quiet] *= 1e-3
    calibration = {"input_ids": _ids(4).numpy(), "attention_mask": torch.ones(4, 10, dtype=torch.long).numpy()}
    student = models.derive_student(teacher, [1, 2], WIDTH // 4, calibration=calibration)
    loud = torch.arange(0, WIDTH, 4)
    for new, old in enumerate([1, 2]):
        s_mlp, t_mlp = student.model.layers[new].mlp, teacher.model.layers[old].mlp
        assert torch.equal(s_mlp.gate_proj.weight, t_mlp.gate_proj.weight[loud])
        assert torch.equal(s_mlp.up_proj.weight, t_mlp.up_proj.weight[loud])
        assert torch.equal(s_mlp.down_proj.weight, t_mlp.down_proj.weight[:, loud])
        x = torch.randn(2, 5, HIDDEN)
        with torch.no_grad():  # the narrow block computes the teacher's block over the kept channels
            kept = t_mlp.down_proj.weight[:, loud] @ (torch.nn.functional.silu(x @ t_mlp.gate_proj.weight[loud].T)
                                                      * (x @ t_mlp.up_proj.weight[loud].T)).transpose(1, 2)
            assert torch.allclose(s_mlp(x), kept.transpose(1, 2), atol=1e-6)
    assert student.config.intermediate_size == WIDTH // 4


def test_weight_importance_without_calibration():
    teacher = _teacher()
    importance = models.feedforward_importance(teacher)
    mlp = teacher.model.layers[2].mlp
    by_hand = mlp.gate_proj.weight[5].norm() * mlp.up_proj.weight[5].norm() * mlp.down_proj.weight[:, 5].norm()
    assert len(importance) == LAYERS and torch.isclose(importance[2][5], by_hand)


@pytest.mark.parametrize(("layers", "width", "message"), [
    ([0, 4], None, r"student\.fromTeacher\.layers: \[4\] outside the teacher's layers 0\.\.3"),
    ([1], WIDTH + 1, r"student\.fromTeacher\.intermediateSize: 65 is wider than the teacher's feed-forward"),
])
def test_bad_derivations_are_refused_naming_the_field(layers, width, message):
    with pytest.raises(models.ModelError, match=message):
        models.derive_student(_teacher(), layers, width)


def test_preflight_refuses_a_width_beyond_the_teacher(tmp_path):
    spec = DistillationJobSpec.model_validate({
        "task": {"type": "causal-lm"}, "teacher": {"uri": "/models/t"},
        "student": {"fromTeacher": {"layers": [0, 1], "intermediateSize": 128}},
        "dataset": {"uri": "/data/x.jsonl"}, "output": {"uri": str(tmp_path)}})
    with pytest.raises(PreflightError, match=r"student\.fromTeacher\.intermediateSize: 128 .* at most 64"):
        check_student_layers(spec, {"teacher": ("teacher.uri", _teacher().config)})


def test_preflight_refuses_narrowing_a_teacher_without_llama_style_blocks(tmp_path):
    from transformers import BertConfig

    spec = DistillationJobSpec.model_validate({
        "task": {"type": "causal-lm"}, "teacher": {"uri": "/models/t"},
        "student": {"fromTeacher": {"layers": [0], "intermediateSize": 16}},
        "dataset": {"uri": "/data/x.jsonl"}, "output": {"uri": str(tmp_path)}})
    bert = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      is_decoder=True)
    with pytest.raises(PreflightError, match=r"intermediateSize: narrowing .* bert has none"):
        check_student_layers(spec, {"teacher": ("teacher.uri", bert)})
    check_student_layers(spec, {"teacher": ("teacher.uri", _teacher().config)})  # a Llama: accepted
