"""Token-level LLM distillation losses checked against hand arithmetic on a 4-token vocabulary:
masking, temperature, the GKD beta endpoints, DistiLLM's skew, numerics and validation."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tests.builders import kl_by_hand as kl
from tests.builders import softmax_by_hand as softmax
from tests.builders import step_view
from torch import Tensor

from distill.errors import DistillError
from distill.llm.losses import (
    IGNORE_INDEX,
    ForwardKL,
    GeneralizedJSD,
    LMLoss,
    ReverseKL,
    SkewForwardKL,
    SkewReverseKL,
    TotalVariation,
    forward_kl,
    generalized_jsd,
    lm_loss,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from distill.losses import StepView

INF = math.inf

# One sequence of 3 positions over a vocabulary of 4; the middle position is ignored (-100).
STUDENT = [[1.0, 2.0, 0.5, -1.0], [9.0, -9.0, 3.0, 0.0], [0.0, -1.0, 3.0, 0.5]]
TEACHER = [[2.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, -2.0, 0.0]]
LABELS = [1, IGNORE_INDEX, 2]
VALID = [0, 2]


# -- hand arithmetic, no torch ------------------------------------------------------------------


def mix(a: list[float], b: list[float], w: float) -> list[float]:
    return [w * ai + (1 - w) * bi for ai, bi in zip(a, b, strict=True)]


def jsd(p: list[float], q: list[float], beta: float) -> float:
    m = mix(p, q, beta)
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def tv(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q, strict=True))


def by_hand(
    per_token: Callable[[list[float], list[float]], float],
    student: list[list[float]],
    teacher: list[list[float]],
    temperature: float = 1.0,
    valid: list[int] = VALID,
) -> float:
    """Mean over the valid positions of per_token(p_teacher, q_student)."""
    values = [per_token(softmax(teacher[i], temperature), softmax(student[i], temperature)) for i in valid]
    return sum(values) / len(values)


# name -> (loss(s, t, labels, T), per-token divergence of (p_teacher, q_student) by hand)
LOSSES: dict[str, tuple[Callable[..., Tensor], Callable[[list[float], list[float]], float]]] = {
    "forward": (forward_kl, lambda p, q: kl(p, q)),
    "reverse": (reverse_kl, lambda p, q: kl(q, p)),
    "jsd_0.5": (lambda s, t, y, T=1.0: generalized_jsd(s, t, y, 0.5, T), lambda p, q: jsd(p, q, 0.5)),
    "jsd_0.3": (lambda s, t, y, T=1.0: generalized_jsd(s, t, y, 0.3, T), lambda p, q: jsd(p, q, 0.3)),
    "skew_forward_0.1": (lambda s, t, y, T=1.0: skew_forward_kl(s, t, y, 0.1, T), lambda p, q: kl(p, mix(p, q, 0.1))),
    "skew_reverse_0.1": (lambda s, t, y, T=1.0: skew_reverse_kl(s, t, y, 0.1, T), lambda p, q: kl(q, mix(q, p, 0.1))),
    "tv": (total_variation, tv),
}
# The losses that stay finite where the teacher alone gives probability 0.
FINITE_ON_MASKED_TEACHER = ["forward", "jsd_0.5", "jsd_0.3", "skew_forward_0.1", "skew_reverse_0.1", "tv"]


def tensors(
    student: list[list[float]] = STUDENT,
    teacher: list[list[float]] = TEACHER,
    labels: list[int] = LABELS,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """[1, L, V] student (requiring grad) and teacher logits, [1, L] labels."""
    s = torch.tensor([student], dtype=dtype, requires_grad=True)
    t = torch.tensor([teacher], dtype=dtype)
    return s, t, torch.tensor([labels])


def close(value: Tensor, expected: float) -> bool:
    return math.isclose(value.item(), expected, rel_tol=1e-5, abs_tol=1e-6)


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_value_is_the_mean_over_valid_tokens_and_ignores_masked_ones(name: str) -> None:
    loss, per_token = LOSSES[name]
    s, t, y = tensors()
    value = loss(s, t, y)
    assert close(value, by_hand(per_token, STUDENT, TEACHER))
    # 2 valid tokens of 3: the average of the two, not a third of their sum.
    assert not close(value, by_hand(per_token, STUDENT, TEACHER) * 2 / 3)

    wild_s = [STUDENT[0], [1e4, -1e4, 50.0, 0.0], STUDENT[2]]
    wild_t = [TEACHER[0], [-1e4, 3e3, -INF, 1.0], TEACHER[2]]
    s2, t2, y2 = tensors(wild_s, wild_t)
    value2 = loss(s2, t2, y2)
    assert value2.item() == value.item()
    value2.backward()
    assert torch.isfinite(s2.grad).all()
    assert (s2.grad[0, 1] == 0).all()  # nothing reaches the ignored position


@pytest.mark.parametrize("name", LOSSES)
def test_temperature_divides_the_logits_without_a_t_squared_factor(name: str) -> None:
    loss, per_token = LOSSES[name]
    s, t, y = tensors()
    at_2 = loss(s, t, y, 2.0)
    assert close(at_2, by_hand(per_token, STUDENT, TEACHER, temperature=2.0))
    assert torch.allclose(at_2, loss(s / 2, t / 2, y, 1.0), rtol=1e-6, atol=0)


def test_two_dimensional_logits_give_the_same_value() -> None:
    s, t, y = tensors()
    assert forward_kl(s[0], t[0], y[0]).item() == pytest.approx(forward_kl(s, t, y).item(), rel=1e-6)


# -- GKD's beta and DistiLLM's alpha ------------------------------------------------------------


def test_jsd_endpoints_are_the_two_kls_exactly() -> None:
    s, t, y = tensors()
    assert torch.equal(generalized_jsd(s, t, y, beta=0.0), forward_kl(s, t, y))
    assert torch.equal(generalized_jsd(s, t, y, beta=1.0), reverse_kl(s, t, y))
    assert torch.equal(generalized_jsd(s, t, y, beta=0, temperature=2.0), forward_kl(s, t, y, 2.0))


def test_jsd_at_one_half_is_the_symmetric_jsd() -> None:
    s, t, y = tensors()

    def symmetric(p: list[float], q: list[float]) -> float:
        m = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]
        return (kl(p, m) + kl(q, m)) / 2

    value = generalized_jsd(s, t, y, beta=0.5)
    assert close(value, by_hand(symmetric, STUDENT, TEACHER))
    assert value.item() < math.log(2)  # the symmetric JSD is bounded by log 2


def test_jsd_near_the_ends_tends_to_zero_not_to_the_kls() -> None:
    s, t, y = tensors()
    fkl, rkl = forward_kl(s, t, y).item(), reverse_kl(s, t, y).item()
    near_0 = generalized_jsd(s, t, y, beta=1e-6).item()
    near_1 = generalized_jsd(s, t, y, beta=1 - 1e-6).item()
    assert fkl > 0.1 and rkl > 0.1
    assert 0 <= near_0 < 1e-4 and 0 <= near_1 < 1e-4
    assert near_0 == pytest.approx(1e-6 * fkl, rel=1e-2)  # ≈ β · KL(p ‖ q) for small β
    assert near_1 == pytest.approx(1e-6 * rkl, rel=1e-2)


def test_skew_with_alpha_zero_is_the_plain_kl_and_alpha_one_half_matches_hand() -> None:
    s, t, y = tensors()
    assert torch.equal(skew_forward_kl(s, t, y, alpha=0.0), forward_kl(s, t, y))
    assert torch.equal(skew_reverse_kl(s, t, y, alpha=0.0), reverse_kl(s, t, y))
    assert close(skew_forward_kl(s, t, y, alpha=0.5), by_hand(lambda p, q: kl(p, mix(p, q, 0.5)), STUDENT, TEACHER))
    assert close(skew_reverse_kl(s, t, y, alpha=0.5), by_hand(lambda p, q: kl(q, mix(q, p, 0.5)), STUDENT, TEACHER))


def test_total_variation_is_bounded_by_one() -> None:
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 7, generator=generator) * 10
    t = torch.randn(3, 5, 7, generator=generator) * 10
    y = torch.zeros(3, 5, dtype=torch.long)
    assert 0 <= total_variation(s, t, y).item() <= 1
    # Disjoint one-hot-like distributions come close to 1.
    far = total_variation(torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([[0.0, 50.0, 0.0]]), torch.tensor([0]))
    assert far.item() == pytest.approx(1.0, abs=1e-6)


# -- zero, sign and gradients -------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_zero_for_equal_distributions_positive_otherwise_and_gradients_reach_the_student_only(name: str) -> None:
    loss = LOSSES[name][0]
    s, t, y = tensors()
    assert loss(s, s.detach().clone(), y).item() == pytest.approx(0.0, abs=1e-6)
    t.requires_grad_(True)
    value = loss(s, t, y)
    assert value.item() > 0
    value.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_all_masked_batch_gives_zero_with_a_grad_fn(name: str) -> None:
    loss = LOSSES[name][0]
    s, t, _ = tensors()
    value = loss(s, t, torch.full((1, 3), IGNORE_INDEX))
    assert value.item() == 0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", FINITE_ON_MASKED_TEACHER)
def test_minus_infinity_teacher_logits_give_no_nan(name: str) -> None:
    loss, per_token = LOSSES[name]
    teacher = [[2.0, -INF, 1.0, 0.5], TEACHER[1], [1.0, -INF, -INF, 0.0]]
    s, t, y = tensors(teacher=teacher)
    value = loss(s, t, y)
    assert close(value, by_hand(per_token, STUDENT, teacher))
    value.backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_vocabulary_masked_in_both_models_gives_finite_values_and_gradients(name: str) -> None:
    loss, per_token = LOSSES[name]
    student = [[1.0, -INF, 0.5, -1.0], STUDENT[1], [0.0, -INF, -INF, 0.5]]
    teacher = [[2.0, -INF, 1.0, 0.5], TEACHER[1], [1.0, -INF, -INF, 0.0]]
    s, t, y = tensors(student, teacher)
    value = loss(s, t, y)
    assert close(value, by_hand(per_token, student, teacher))
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_reverse_kl_is_infinite_not_nan_where_only_the_teacher_excludes_a_token() -> None:
    s, t, y = tensors(teacher=[[2.0, -INF, 1.0, 0.5], TEACHER[1], TEACHER[2]])
    assert reverse_kl(s, t, y).item() == INF
    assert math.isfinite(skew_reverse_kl(s, t, y, alpha=0.1).item())


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_match_finite_differences(name: str) -> None:
    loss = LOSSES[name][0]
    s, t, y = tensors(teacher=[[2.0, -INF, 1.0, 0.5], TEACHER[1], TEACHER[2]], dtype=torch.float64)
    if name == "reverse":  # finite only where the student excludes the same token
        s = torch.tensor([[[1.0, -INF, 0.5, -1.0], STUDENT[1], STUDENT[2]]], dtype=torch.float64, requires_grad=True)
    if name == "tv":  # |x| is not differentiable at 0: keep p − q away from it
        t = t * 0.5
    assert torch.autograd.gradcheck(lambda x: loss(x, t, y), (s,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", LOSSES)
def test_bf16_inputs_match_float32(name: str) -> None:
    loss = LOSSES[name][0]
    generator = torch.Generator().manual_seed(1)
    s = torch.randn(2, 5, 11, generator=generator)
    t = torch.randn(2, 5, 11, generator=generator)
    y = torch.randint(0, 11, (2, 5), generator=generator)
    y[0, :2] = IGNORE_INDEX
    s16 = s.to(torch.bfloat16).requires_grad_(True)
    value = loss(s16, t.to(torch.bfloat16), y)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(s, t, y).item(), abs=1e-2)
    value.backward()
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_vocabulary_mismatch_is_a_distill_error(name: str) -> None:
    loss = LOSSES[name][0]
    s, _, y = tensors()
    with pytest.raises(DistillError, match=re.escape("student and teacher vocabularies differ: 4 vs 5")):
        loss(s, torch.zeros(1, 3, 5), y)


def test_bad_shapes_are_distill_errors() -> None:
    s, t, y = tensors()
    with pytest.raises(DistillError, match="differ in shape"):
        forward_kl(s, t[:, :2], y)
    with pytest.raises(DistillError, match="labels must have"):
        forward_kl(s, t, y[:, :2])
    with pytest.raises(DistillError, match="labels must have"):
        lm_loss(s, y[0])


@pytest.mark.parametrize("temperature", [0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_temperature_is_a_distill_error(temperature: object) -> None:
    s, t, y = tensors()
    for loss, _ in LOSSES.values():
        with pytest.raises(DistillError, match="temperature must be a positive number"):
            loss(s, t, y, temperature)


@pytest.mark.parametrize("beta", [-0.1, 1.1, math.nan, None])
def test_bad_beta_is_a_distill_error(beta: object) -> None:
    s, t, y = tensors()
    with pytest.raises(DistillError, match=re.escape("beta must be a number in [0, 1]")):
        generalized_jsd(s, t, y, beta)
    with pytest.raises(DistillError, match="beta"):
        GeneralizedJSD(beta=beta)


@pytest.mark.parametrize("alpha", [1.0, -0.1, 1.5, math.nan])
def test_bad_alpha_is_a_distill_error(alpha: float) -> None:
    s, t, y = tensors()
    for loss in (skew_forward_kl, skew_reverse_kl):
        with pytest.raises(DistillError, match=re.escape("alpha must be a number in [0, 1)")):
            loss(s, t, y, alpha)
    for term in (SkewForwardKL, SkewReverseKL):
        with pytest.raises(DistillError, match="alpha"):
            term(alpha=alpha)


# -- the loss terms and the LM loss -------------------------------------------------------------


def make_view(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> StepView:
    return step_view(student_logits, teacher_logits, targets=targets, teacher_features={}, index=None)


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (lambda: ForwardKL(0.5, 2.0), lambda s, t, y: forward_kl(s, t, y, 2.0)),
        (lambda: ReverseKL(0.5, 2.0), lambda s, t, y: reverse_kl(s, t, y, 2.0)),
        (lambda: GeneralizedJSD(0.5, 2.0, beta=0.3), lambda s, t, y: generalized_jsd(s, t, y, 0.3, 2.0)),
        (lambda: SkewForwardKL(0.5, 2.0, alpha=0.2), lambda s, t, y: skew_forward_kl(s, t, y, 0.2, 2.0)),
        (lambda: SkewReverseKL(0.5, 2.0, alpha=0.2), lambda s, t, y: skew_reverse_kl(s, t, y, 0.2, 2.0)),
        (lambda: TotalVariation(0.5, 2.0), lambda s, t, y: total_variation(s, t, y, 2.0)),
    ],
    ids=["forward", "reverse", "jsd", "skew_forward", "skew_reverse", "tv"],
)
def test_each_divergence_term_reads_the_view(term: Callable[[], Any], expected: Callable[..., Tensor]) -> None:
    s, t, y = tensors()
    built = term()
    assert built.needs_teacher and built.weight == 0.5
    assert torch.equal(built(make_view(s, t, y)), expected(s, t, y))


def test_divergence_terms_reject_bad_settings() -> None:
    with pytest.raises(DistillError, match="temperature"):
        ForwardKL(temperature=0)
    with pytest.raises(DistillError, match="weight"):
        ReverseKL(weight=-1)
    s, _, y = tensors()
    with pytest.raises(DistillError, match="ForwardKL needs a teacher"):
        ForwardKL()(make_view(s, None, y))


def test_lm_loss_is_the_cross_entropy_over_valid_tokens() -> None:
    s, _, y = tensors()
    expected = -sum(math.log(softmax(STUDENT[i])[LABELS[i]]) for i in VALID) / len(VALID)
    assert close(lm_loss(s, y), expected)
    assert close(LMLoss()(make_view(s, None, y)), expected)
    assert not LMLoss.needs_teacher
    assert lm_loss(s.to(torch.bfloat16), y).item() == pytest.approx(expected, abs=1e-2)
    nothing = lm_loss(s, torch.full((1, 3), IGNORE_INDEX))
    assert nothing.item() == 0 and nothing.grad_fn is not None
