"""The distillation losses against their mathematical identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kubedistill_jobs import losses


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 7, 11, generator=gen), torch.randn(4, 7, 11, generator=gen)


def _reference_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p ‖ q) with torch's own kl_div, averaged over positions."""
    p_log = F.log_softmax(p_logits / temperature, -1)
    q_log = F.log_softmax(q_logits / temperature, -1)
    return F.kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1).mean()


@pytest.mark.parametrize("name", ["forward-kl", "reverse-kl", "jsd"])
def test_zero_for_identical_distributions(logits, name):
    student, _ = logits
    value = losses.soft_loss(student, student.clone(), loss=name, temperature=2.0)
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_forward_and_reverse_kl_swap(logits):
    student, teacher = logits
    forward = losses.soft_loss(student, teacher, loss="forward-kl")
    reverse = losses.soft_loss(teacher, student, loss="reverse-kl")
    assert forward.item() == pytest.approx(reverse.item(), rel=1e-5)
    assert forward.item() == pytest.approx(_reference_kl(teacher, student).item(), rel=1e-5)
    assert forward.item() != pytest.approx(losses.soft_loss(student, teacher, loss="reverse-kl").item(), rel=1e-3)


def test_jsd_symmetric_at_half(logits):
    student, teacher = logits
    one_way = losses.soft_loss(student, teacher, loss="jsd", beta=0.5)
    other_way = losses.soft_loss(teacher, student, loss="jsd", beta=0.5)
    assert one_way.item() == pytest.approx(other_way.item(), rel=1e-5)
    assert 0 < one_way.item() <= torch.log(torch.tensor(2.0)).item()  # JSD is bounded by log 2


def test_jsd_equals_the_kls_at_the_ends(logits):
    student, teacher = logits
    assert losses.soft_loss(student, teacher, loss="jsd", beta=0.0).item() == pytest.approx(
        _reference_kl(teacher, student).item(), rel=1e-5)
    assert losses.soft_loss(student, teacher, loss="jsd", beta=1.0).item() == pytest.approx(
        _reference_kl(student, teacher).item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_temperature_squared_scaling(logits, temperature):
    student, teacher = logits
    value = losses.soft_loss(student, teacher, temperature=temperature)
    assert value.item() == pytest.approx(temperature**2 * _reference_kl(teacher, student, temperature).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["forward-kl", "reverse-kl", "jsd"])
def test_topk_path_equals_full_loss_when_k_is_the_vocabulary(logits, name):
    student, teacher = logits
    values, indices = teacher.topk(teacher.shape[-1], dim=-1)
    full = losses.soft_loss(student, teacher, loss=name, temperature=2.0, beta=0.3)
    topk = losses.soft_loss(student, values, teacher_topk_indices=indices, loss=name, temperature=2.0, beta=0.3)
    assert topk.item() == pytest.approx(full.item(), rel=1e-5)


def test_topk_log_probabilities_keep_the_rest_of_the_teacher_as_one_bucket(logits):
    """Cached top-k full-vocabulary log-probabilities, forward KL at T = 1: the divergence of both distributions
    coarsened to the k tokens and the rest. Exact with k = V - 1; between 0 and the full divergence for any k;
    with the flag off, the renormalised top-k loss as before."""
    student, teacher = logits
    log_p = torch.log_softmax(teacher, dim=-1)
    full = losses.soft_loss(student, teacher, temperature=1.0)
    values, indices = log_p.topk(teacher.shape[-1] - 1, dim=-1)
    exact = losses.soft_loss(student, values, teacher_topk_indices=indices, temperature=1.0,
                             teacher_topk_logprobs=True)
    assert exact.item() == pytest.approx(full.item(), rel=1e-4)
    for k in (1, 3, 6):
        values, indices = log_p.topk(k, dim=-1)
        with_rest = losses.soft_loss(student, values, teacher_topk_indices=indices, temperature=1.0,
                                     teacher_topk_logprobs=True)
        # by hand: the k probabilities and 1 - their sum, against the student's
        q = torch.softmax(student, dim=-1)
        q_k, p_k = q.gather(-1, indices), values.exp()
        p_all = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1)
        q_all = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
        by_hand = (p_all * (p_all.log() - q_all.log())).sum(-1).mean()
        assert with_rest.item() == pytest.approx(by_hand.item(), rel=1e-4)
        assert 0.0 <= with_rest.item() <= full.item() + 1e-6
        renormalised = losses.soft_loss(student, values, teacher_topk_indices=indices, temperature=1.0)
        assert renormalised.item() == pytest.approx(
            losses.soft_loss(student, values + 3.0, teacher_topk_indices=indices, temperature=1.0).item(), rel=1e-5)
    # another temperature or loss than the forward KL at 1: renormalised, as for raw logits
    assert losses.soft_loss(student, values, teacher_topk_indices=indices, temperature=2.0,
                            teacher_topk_logprobs=True).item() == pytest.approx(losses.soft_loss(
                                student, values, teacher_topk_indices=indices, temperature=2.0).item(), rel=1e-6)


def test_padding_slots_of_fewer_candidates_count_once_in_the_rest():
    """An endpoint's two candidates in a top-4 cache: the two empty slots repeat the first id at about -1e4."""
    student = torch.tensor([[1.0, 0.5, -0.5, 0.0, 2.0]])
    values = torch.tensor([[-0.2, -2.0, -1.0e4, -1.0e4]])
    indices = torch.tensor([[4, 0, 4, 4]])
    got = losses.soft_loss(student, values, teacher_topk_indices=indices, temperature=1.0, teacher_topk_logprobs=True)
    q = torch.softmax(student, dim=-1)[0]
    p = torch.tensor([0.2, 2.0]).neg().exp()
    p_all = torch.cat([p, 1 - p.sum()[None]])
    q_all = torch.stack([q[4], q[0], q[1] + q[2] + q[3]])
    assert got.item() == pytest.approx(float((p_all * (p_all.log() - q_all.log())).sum()), rel=1e-4)


def test_topk_loss_is_zero_when_the_student_matches_the_kept_tokens():
    teacher = torch.tensor([[5.0, 4.0, -30.0, -30.0]])
    values, indices = teacher.topk(2, dim=-1)
    assert losses.soft_loss(teacher, values, teacher_topk_indices=indices).item() == pytest.approx(0.0, abs=1e-6)


def test_topk_larger_than_vocabulary_is_refused(logits):
    student, _ = logits
    values = torch.zeros(*student.shape[:-1], 12)
    with pytest.raises(ValueError, match="topK"):
        losses.soft_loss(student, values, teacher_topk_indices=values.long())


def test_label_masking_leaves_out_ignored_positions(logits):
    student, teacher = logits
    labels = torch.randint(0, 11, student.shape[:-1], generator=torch.Generator().manual_seed(1))
    labels[:, 4:] = losses.IGNORE_INDEX
    masked = losses.distillation_loss(student, teacher, labels, alpha=0.6, temperature=1.0)
    kept = losses.distillation_loss(student[:, :4], teacher[:, :4], labels[:, :4], alpha=0.6, temperature=1.0)
    assert masked.total.item() == pytest.approx(kept.total.item(), rel=1e-5)
    assert masked.hard.item() == pytest.approx(F.cross_entropy(student[:, :4].reshape(-1, 11),
                                                               labels[:, :4].reshape(-1)).item(), rel=1e-5)


def test_alpha_mixes_soft_and_hard_terms():
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    labels = torch.randint(0, 5, (8,), generator=gen)
    parts = losses.distillation_loss(student, teacher, labels, alpha=0.7, temperature=3.0)
    assert parts.total.item() == pytest.approx(0.7 * parts.soft.item() + 0.3 * parts.hard.item(), rel=1e-6)
    assert parts.soft.item() == pytest.approx(9.0 * _reference_kl(teacher, student, 3.0).item(), rel=1e-5)
    hard_only = losses.distillation_loss(student, None, labels)
    assert hard_only.total.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)


def test_hidden_state_loss_learns_a_projection():
    torch.manual_seed(0)
    student_hidden = torch.randn(64, 8)
    teacher_hidden = student_hidden @ torch.randn(8, 16)
    projection = losses.HiddenStateProjection(8, 16)
    optimizer = torch.optim.Adam(projection.parameters(), lr=0.05)
    first = losses.hidden_state_loss(projection, student_hidden, teacher_hidden).item()
    for _ in range(300):
        optimizer.zero_grad()
        value = losses.hidden_state_loss(projection, student_hidden, teacher_hidden)
        value.backward()
        optimizer.step()
    assert value.item() < 0.01 * first


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_only_the_counted_positions_are_computed_and_the_loss_and_gradient_are_unchanged(alpha):
    """A sequence batch whose mask leaves positions out (padding, a prompt) is cut to the counted positions
    before any vocabulary-wide work: the same loss and gradient as on those positions alone, cached top-k too."""
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 6, 50, generator=gen)
    values, indices = torch.randn(2, 6, 4, generator=gen), torch.randint(0, 50, (2, 6, 4), generator=gen)
    labels = torch.randint(0, 50, (2, 6), generator=gen)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2:], mask[1, 4:] = True, True  # each row's answer
    labels = labels.masked_fill(~mask, losses.IGNORE_INDEX)
    full = student.clone().requires_grad_()
    parts = losses.distillation_loss(full, values, labels, alpha=alpha, temperature=2.0, mask=mask,
                                     teacher_topk_indices=indices)
    parts.total.backward()
    alone = student[mask].clone().requires_grad_()  # (N, V): the counted positions, nothing else
    want = losses.distillation_loss(alone, values[mask], labels[mask], alpha=alpha, temperature=2.0,
                                    teacher_topk_indices=indices[mask])
    want.total.backward()
    assert parts.total.item() == pytest.approx(want.total.item(), rel=1e-6)
    assert parts.hard.item() == pytest.approx(want.hard.item(), rel=1e-6) and parts.hard.item() > 0
    assert torch.allclose(full.grad[mask], alone.grad) and not full.grad[~mask].any()


@pytest.mark.parametrize(("name", "k", "topk_logprobs"), [("forward-kl", None, False), ("jsd", None, False),
                                                         ("forward-kl", 4, True), ("forward-kl", 4, False),
                                                         ("reverse-kl", 4, False)])
def test_one_shared_log_softmax_gives_the_loss_and_gradient_of_the_two_terms_apart(logits, name, k, topk_logprobs):
    """At temperature 1 the soft and hard terms share one log-softmax over the vocabulary: the result must be
    what each term gives from the raw logits, value and gradient."""
    student, teacher = logits
    labels = torch.randint(0, 11, (4, 7), generator=torch.Generator().manual_seed(1))
    labels[0, :3] = losses.IGNORE_INDEX
    if k is None:
        target, indices = teacher, None
    else:
        top = F.log_softmax(teacher, -1).topk(k, -1)
        target, indices = (top.values if topk_logprobs else teacher.gather(-1, top.indices)), top.indices
    mask = labels != losses.IGNORE_INDEX

    shared_in = student.clone().requires_grad_(True)
    parts = losses.distillation_loss(shared_in, target, labels, loss=name, temperature=1.0, alpha=0.3,
                                     teacher_topk_indices=indices, teacher_topk_logprobs=topk_logprobs)
    parts.total.backward()

    apart_in = student.clone().requires_grad_(True)
    soft = losses.soft_loss(apart_in, target, teacher_topk_indices=indices, loss=name, temperature=1.0, mask=mask,
                            teacher_topk_logprobs=topk_logprobs)
    hard = F.cross_entropy(apart_in.reshape(-1, 11), labels.reshape(-1), ignore_index=losses.IGNORE_INDEX)
    (0.3 * soft + 0.7 * hard).backward()

    assert parts.soft.item() == pytest.approx(soft.item(), rel=1e-5)
    assert parts.hard.item() == pytest.approx(hard.item(), rel=1e-5)
    assert torch.allclose(shared_in.grad, apart_in.grad, atol=1e-6)


def test_student_log_probabilities_are_refused_at_another_temperature(logits):
    student, teacher = logits
    with pytest.raises(ValueError, match="temperature 1"):
        losses.soft_loss(F.log_softmax(student, -1), teacher, temperature=2.0, student_log_probs=True)
