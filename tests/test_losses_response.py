"""Response-based terms beyond plain KD: DKD and DIST checked against hand arithmetic, logit
standardisation, KD towards a weighted mixture of teachers, configs and argument validation."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import hydra
import pytest
import torch
from tests.builders import kl_by_hand, softmax_by_hand, step_view
from tests.conftest import compose_config
from torch import Tensor

from distill.data.base import UNLABELLED
from distill.errors import DistillError
from distill.losses import DISTLoss, DKDLoss, KDLoss, StepView, kd_loss, standardize

# 2 samples x 4 classes; labels 0 and 2 (neither is the student's argmax in row 0)
STUDENT = [[1.0, 2.0, 0.5, -0.5], [0.0, -1.0, 3.0, 1.0]]
TEACHER = [[2.0, 0.0, 1.0, -1.0], [1.0, 0.5, 2.5, -2.0]]
LABELS = [0, 2]
OTHER_TEACHER = [[-1.0, 1.5, 0.0, 2.0], [0.5, 2.0, -1.0, 0.0]]


# Views at epoch 100: past DKD's warm-up unless a test says otherwise.
make_view = functools.partial(step_view, epoch=100)


def t64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -- hand arithmetic, no torch ------------------------------------------------------------------


def tckd_by_hand(student: list[list[float]], teacher: list[list[float]], labels: list[int], t: float) -> float:
    """Batch mean of the binary KL between [p_target, 1 − p_target] of teacher and student at T (no T²)."""
    kls = []
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        ps, pt = softmax_by_hand(s_row, t)[y], softmax_by_hand(t_row, t)[y]
        kls.append(pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps)))
    return sum(kls) / len(kls)


def nckd_by_hand(student: list[list[float]], teacher: list[list[float]], labels: list[int], t: float) -> float:
    """Batch mean of the KL between the non-target distributions (target logit dropped) at T (no T²)."""
    kls = []
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        s_rest = [z for c, z in enumerate(s_row) if c != y]
        t_rest = [z for c, z in enumerate(t_row) if c != y]
        kls.append(kl_by_hand(softmax_by_hand(t_rest, t), softmax_by_hand(s_rest, t)))
    return sum(kls) / len(kls)


def pearson_by_hand(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    var_a = sum((x - ma) ** 2 for x in a)
    var_b = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(var_a * var_b)


def dist_by_hand(student: list[list[float]], teacher: list[list[float]], t: float, beta: float, gamma: float) -> float:
    p_s = [softmax_by_hand(r, t) for r in student]
    p_t = [softmax_by_hand(r, t) for r in teacher]
    inter = 1 - sum(pearson_by_hand(a, b) for a, b in zip(p_s, p_t, strict=True)) / len(p_s)
    columns = range(len(p_s[0]))
    intra = 1 - sum(pearson_by_hand([r[c] for r in p_s], [r[c] for r in p_t]) for c in columns) / len(columns)
    return t**2 * (beta * inter + gamma * intra)


def test_binary_kl_by_hand_is_right() -> None:
    # one row [ln 3, 0, 0] -> p_target = 3/5 (student) and uniform teacher -> p_target = 1/3
    value = tckd_by_hand([[math.log(3), 0.0, 0.0]], [[0.0, 0.0, 0.0]], [0], 1.0)
    assert value == pytest.approx(1 / 3 * math.log((1 / 3) / (3 / 5)) + 2 / 3 * math.log((2 / 3) / (2 / 5)), rel=1e-12)
    # and the non-target parts of those rows are both uniform over 2 classes: NCKD = 0
    assert nckd_by_hand([[math.log(3), 0.0, 0.0]], [[0.0, 0.0, 0.0]], [0], 1.0) == pytest.approx(0.0, abs=1e-15)


# -- DKD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dkd_parts_match_hand_computation(temperature: float) -> None:
    s, t, y = t64(STUDENT), t64(TEACHER), torch.tensor(LABELS)
    tckd = tckd_by_hand(STUDENT, TEACHER, LABELS, temperature)
    nckd = nckd_by_hand(STUDENT, TEACHER, LABELS, temperature)
    assert tckd > 1e-3 and nckd > 1e-3  # both parts are really exercised
    t2 = temperature**2
    view = make_view(s, t, targets=y)
    only_tckd = DKDLoss(alpha=1.0, beta=0.0, temperature=temperature, warmup_epochs=0)(view)
    only_nckd = DKDLoss(alpha=0.0, beta=1.0, temperature=temperature, warmup_epochs=0)(view)
    assert only_tckd.item() == pytest.approx(tckd * t2, rel=1e-9)
    assert only_nckd.item() == pytest.approx(nckd * t2, rel=1e-9)
    both = DKDLoss(alpha=0.5, beta=3.0, temperature=temperature, warmup_epochs=0)(view)
    assert both.item() == pytest.approx((0.5 * tckd + 3.0 * nckd) * t2, rel=1e-9)


def test_dkd_known_values() -> None:
    # Numbers from the hand formulas, written out so a change to both would still be caught.
    assert tckd_by_hand(STUDENT, TEACHER, LABELS, 1.0) == pytest.approx(0.22219238, rel=1e-6)
    assert nckd_by_hand(STUDENT, TEACHER, LABELS, 1.0) == pytest.approx(0.81138990, rel=1e-6)
    view = make_view(torch.tensor(STUDENT), torch.tensor(TEACHER), targets=torch.tensor(LABELS))
    value = DKDLoss(alpha=2.0, beta=0.5, temperature=1.0, warmup_epochs=0)(view)
    assert value.item() == pytest.approx(2.0 * 0.22219238 + 0.5 * 0.81138990, rel=1e-5)


def test_dkd_is_not_plain_kd() -> None:
    # alpha = beta = 1 is not KD: KD = TCKD + (1 − p_t,target) · NCKD per row, weighted differently
    view = make_view(t64(STUDENT), t64(TEACHER), targets=torch.tensor(LABELS))
    dkd = DKDLoss(alpha=1.0, beta=1.0, temperature=2.0, warmup_epochs=0)(view).item()
    assert dkd != pytest.approx(kd_loss(t64(STUDENT), t64(TEACHER), 2.0).item(), rel=1e-3)


@pytest.mark.parametrize("standardize_logits", [False, True])
def test_dkd_is_zero_when_student_equals_teacher(standardize_logits: bool) -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    term = DKDLoss(temperature=4.0, warmup_epochs=0, standardize=standardize_logits)
    value = term(make_view(s, torch.tensor(STUDENT), targets=torch.tensor(LABELS)))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    value.backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), atol=1e-5, rtol=0)


def test_dkd_gradient_is_finite_and_reaches_the_student() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    DKDLoss(warmup_epochs=0)(make_view(s, torch.tensor(TEACHER), targets=torch.tensor(LABELS))).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize(("epoch", "factor"), [(0, 0.0), (5, 0.5), (10, 1.0), (25, 1.0)])
def test_dkd_warmup_is_linear_from_epoch_zero(epoch: int, factor: float) -> None:
    s, t, y = t64(STUDENT), t64(TEACHER), torch.tensor(LABELS)
    full = DKDLoss(warmup_epochs=0)(make_view(s, t, targets=y, epoch=0)).item()
    assert full > 0.1
    value = DKDLoss(warmup_epochs=10)(make_view(s, t, targets=y, epoch=epoch)).item()
    assert value == pytest.approx(factor * full, rel=1e-9, abs=1e-12)
    assert DKDLoss(warmup_epochs=10).warmup_factor(epoch) == factor


def test_dkd_refuses_two_classes() -> None:
    view = make_view(torch.zeros(3, 2), torch.zeros(3, 2))
    term = DKDLoss()
    with pytest.raises(DistillError, match="at least 3 classes.*NCKD") as err:
        term.build(view)
    assert "\n" not in str(err.value)
    DKDLoss().build(make_view(torch.zeros(3, 3), torch.zeros(3, 3)))  # 3 classes are fine


def test_dkd_uses_the_teacher_argmax_for_unlabelled_rows() -> None:
    s, t = t64(STUDENT), t64(TEACHER)
    teacher_argmax = [max(range(4), key=row.__getitem__) for row in TEACHER]
    student_argmax = [max(range(4), key=row.__getitem__) for row in STUDENT]
    assert teacher_argmax[0] == 0 and student_argmax[0] == 1  # row 0: they disagree
    term = DKDLoss(alpha=1.0, beta=8.0, temperature=2.0, warmup_epochs=0)
    # row 0 unlabelled, row 1 labelled 3 (not the teacher's argmax)
    unlabelled = term(make_view(s, t, targets=torch.tensor([UNLABELLED, 3]))).item()
    filled = term(make_view(s, t, targets=torch.tensor([teacher_argmax[0], 3]))).item()
    assert unlabelled == pytest.approx(filled, rel=1e-12)
    labels = [teacher_argmax[0], 3]
    expected = (tckd_by_hand(STUDENT, TEACHER, labels, 2.0) + 8.0 * nckd_by_hand(STUDENT, TEACHER, labels, 2.0)) * 4
    assert unlabelled == pytest.approx(expected, rel=1e-9)
    # and another class for that row (the student's argmax) gives a different value: the choice matters
    other = term(make_view(s, t, targets=torch.tensor([student_argmax[0], 3]))).item()
    assert other != pytest.approx(unlabelled, rel=1e-3)


def test_dkd_all_unlabelled_batch_is_finite() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    value = DKDLoss(warmup_epochs=0)(make_view(s, torch.tensor(TEACHER), targets=torch.full((2,), UNLABELLED)))
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    assert torch.isfinite(s.grad).all()


def test_dkd_is_finite_for_extreme_logits() -> None:
    s = torch.tensor([[60.0, -40.0, 0.0, 5.0]], requires_grad=True)
    t = torch.tensor([[-30.0, 80.0, 0.0, 1.0]])
    value = DKDLoss(temperature=1.0, warmup_epochs=0)(make_view(s, t, targets=torch.tensor([0])))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "4"}, "temperature"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"standardize": "false"}, "standardize"),
        ({"weight": -1.0}, "weight"),
    ],
)
def test_dkd_validates_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(DistillError, match=field):
        DKDLoss(**kwargs)


def test_dkd_accepts_zero_alpha_beta_and_warmup() -> None:
    term = DKDLoss(alpha=0, beta=0, warmup_epochs=0)
    assert (term.alpha, term.beta, term.warmup_epochs) == (0.0, 0.0, 0.0)
    assert term.warmup_factor(0) == 1.0


# -- DIST --------------------------------------------------------------------------------------

DIST_STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.5, 0.5, -1.0]]
DIST_TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0], [0.0, 2.0, 0.5]]


def test_pearson_by_hand_is_right() -> None:
    assert pearson_by_hand([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0, rel=1e-12)
    assert pearson_by_hand([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0, rel=1e-12)
    # cov = 1·(−1)... : a = [−1, 0, 1], b = [−1, 1, 0] -> cov 1, var 2 each -> 1/2
    assert pearson_by_hand([1.0, 2.0, 3.0], [0.0, 2.0, 1.0]) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dist_matches_hand_computation(temperature: float) -> None:
    view = make_view(t64(DIST_STUDENT), t64(DIST_TEACHER))
    expected = dist_by_hand(DIST_STUDENT, DIST_TEACHER, temperature, 1.0, 1.0)
    assert expected > 0.1
    assert DISTLoss(temperature=temperature)(view).item() == pytest.approx(expected, rel=1e-6)
    inter = dist_by_hand(DIST_STUDENT, DIST_TEACHER, temperature, 1.0, 0.0)
    intra = dist_by_hand(DIST_STUDENT, DIST_TEACHER, temperature, 0.0, 1.0)
    weighted = DISTLoss(beta=2.0, gamma=0.5, temperature=temperature)(view).item()
    assert weighted == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-6)
    assert inter != pytest.approx(intra, rel=1e-2)  # the two relations really differ here


def test_dist_known_value() -> None:
    # from dist_by_hand at T = 1, beta = gamma = 1, written out
    assert dist_by_hand(DIST_STUDENT, DIST_TEACHER, 1.0, 1.0, 1.0) == pytest.approx(3.0621288, rel=1e-6)


def test_dist_is_zero_when_identical() -> None:
    s = torch.tensor(DIST_STUDENT, requires_grad=True)
    value = DISTLoss(temperature=2.0)(make_view(s, torch.tensor(DIST_STUDENT)))
    assert value.item() == pytest.approx(0.0, abs=1e-5)
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_dist_is_zero_for_an_affine_function_of_the_teacher_probabilities() -> None:
    # p_s = a·p_t + b with a + C·b = 1 is still a distribution, correlated 1 with p_t per sample
    # and (same a, b) per class: DIST is ~0 while KD is not.
    a, classes = 0.4, 3
    b = (1 - a) / classes
    p_t = torch.softmax(t64(DIST_TEACHER), -1)
    student = (a * p_t + b).log()  # softmax(log p) = p
    view = make_view(student, t64(DIST_TEACHER))
    # (not exactly 0: the eps in Pearson's denominator, as in the reference, leaves ~1e-7)
    assert DISTLoss(temperature=1.0)(view).item() == pytest.approx(0.0, abs=1e-5)
    assert DISTLoss(beta=1.0, gamma=0.0)(view).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(student, t64(DIST_TEACHER), 1.0).item() > 0.05
    # a negative slope is anti-correlated per sample: the inter-class loss becomes 2
    flipped = (1 + a) / classes - a * p_t
    assert (flipped > 0).all() and torch.allclose(flipped.sum(-1), torch.ones(3, dtype=torch.float64))
    inter = DISTLoss(beta=1.0, gamma=0.0)(make_view(flipped.log(), t64(DIST_TEACHER))).item()
    assert inter == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"beta": -1.0}, "beta"),
        ({"gamma": -0.5}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
    ],
)
def test_dist_validates_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(DistillError, match=field):
        DISTLoss(**kwargs)


# -- logit standardisation -----------------------------------------------------------------------


def test_standardize_rows_have_mean_zero_and_std_one() -> None:
    z = t64([[1.0, 2.0, 6.0, -3.0], [100.0, 101.0, 99.0, 100.5]])
    out = standardize(z)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(-1), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    # by hand for the first row: mean 1.5, sample std sqrt(Σ(z − 1.5)² / 3)
    std = math.sqrt(((1 - 1.5) ** 2 + (2 - 1.5) ** 2 + (6 - 1.5) ** 2 + (-3 - 1.5) ** 2) / 3)
    assert out[0, 2].item() == pytest.approx((6 - 1.5) / std, rel=1e-6)


def test_standardize_constant_row_is_zero_not_nan() -> None:
    out = standardize(torch.full((1, 5), 3.0))
    assert torch.equal(out, torch.zeros(1, 5))


def test_kd_with_standardize_is_invariant_to_shift_and_scale_of_the_student() -> None:
    s, t = t64(STUDENT), t64(TEACHER)
    term = KDLoss(temperature=2.0, standardize=True)
    base = term(make_view(s, t)).item()
    moved = term(make_view(3.0 * s + 7.0, t)).item()
    assert base > 0.05
    assert moved == pytest.approx(base, rel=1e-6)
    # without standardisation the same change of the student changes the loss
    plain = KDLoss(temperature=2.0)
    assert plain(make_view(3.0 * s + 7.0, t)).item() != pytest.approx(plain(make_view(s, t)).item(), rel=1e-2)


def test_kd_with_standardize_is_kd_on_standardized_logits() -> None:
    s, t = t64(STUDENT), t64(TEACHER)
    value = KDLoss(temperature=2.0, standardize=True)(make_view(s, t)).item()
    assert value == pytest.approx(kd_loss(standardize(s), standardize(t), 2.0).item(), rel=1e-12)
    # T² is kept: the T = 2 value is 4 times the plain KL of the standardised logits at T = 2
    zs, zt = standardize(s).tolist(), standardize(t).tolist()
    kl = sum(kl_by_hand(softmax_by_hand(b, 2.0), softmax_by_hand(a, 2.0)) for a, b in zip(zs, zt, strict=True)) / 2
    assert value == pytest.approx(4.0 * kl, rel=1e-9)


def test_dkd_with_standardize_is_invariant_to_shift_and_scale_of_the_student() -> None:
    s, t, y = t64(STUDENT), t64(TEACHER), torch.tensor(LABELS)
    term = DKDLoss(temperature=2.0, warmup_epochs=0, standardize=True)
    base = term(make_view(s, t, targets=y)).item()
    assert base > 0.05
    assert term(make_view(0.5 * s - 4.0, t, targets=y)).item() == pytest.approx(base, rel=1e-6)
    plain = DKDLoss(temperature=2.0, warmup_epochs=0)
    assert plain(make_view(0.5 * s - 4.0, t, targets=y)).item() != pytest.approx(
        plain(make_view(s, t, targets=y)).item(), rel=1e-2
    )


def test_kd_refuses_non_boolean_standardize() -> None:
    with pytest.raises(DistillError, match="standardize"):
        KDLoss(standardize="true")  # type: ignore[arg-type]


# -- several teachers ----------------------------------------------------------------------------


def two_teacher_view(weights: Tensor, student: list[list[float]] = STUDENT) -> StepView:
    a, b = t64(TEACHER), t64(OTHER_TEACHER)
    # teacher_logits deliberately something else (the mean logits): with weights it must be ignored
    return make_view(t64(student), (a + b) / 2, teachers={"a": a, "b": b}, teacher_weights=weights)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_with_teacher_weights_targets_the_mixture_of_tempered_teachers(temperature: float) -> None:
    weights = [[0.25, 0.75], [0.6, 0.4]]
    value = KDLoss(temperature=temperature)(two_teacher_view(t64(weights))).item()
    kls = []
    for s_row, a_row, b_row, (wa, wb) in zip(STUDENT, TEACHER, OTHER_TEACHER, weights, strict=True):
        pa, pb = softmax_by_hand(a_row, temperature), softmax_by_hand(b_row, temperature)
        mixture = [wa * x + wb * y for x, y in zip(pa, pb, strict=True)]
        kls.append(kl_by_hand(mixture, softmax_by_hand(s_row, temperature)))
    expected = temperature**2 * sum(kls) / 2
    assert value == pytest.approx(expected, rel=1e-9)
    # which is not KD to the mean logits (what teacher_logits holds here)
    mean_logits = (t64(TEACHER) + t64(OTHER_TEACHER)) / 2
    assert value != pytest.approx(kd_loss(t64(STUDENT), mean_logits, temperature).item(), rel=1e-3)


def test_kd_mixture_differs_from_the_student_only_by_a_constant_from_weighted_kls() -> None:
    # Σ_k w_k KL(p_k ‖ p_s) − KL(p_mix ‖ p_s) does not depend on the student
    weights = t64([[0.25, 0.75], [0.6, 0.4]])

    def weighted_gap(student: list[list[float]]) -> float:
        mixed = KDLoss(temperature=2.0)(two_teacher_view(weights, student)).item()
        total = 0.0
        for i, (wa, wb) in enumerate(weights.tolist()):
            p_s = softmax_by_hand(student[i], 2.0)
            total += wa * kl_by_hand(softmax_by_hand(TEACHER[i], 2.0), p_s)
            total += wb * kl_by_hand(softmax_by_hand(OTHER_TEACHER[i], 2.0), p_s)
        return 4.0 * total / 2 - mixed

    assert weighted_gap(STUDENT) == pytest.approx(weighted_gap([[0.0, 0.0, 3.0, 1.0], [2.0, -2.0, 0.0, 0.5]]), rel=1e-9)
    assert weighted_gap(STUDENT) > 1e-3  # a real constant, not zero


@pytest.mark.parametrize(
    ("weights", "teacher"), [([[1.0, 0.0], [1.0, 0.0]], TEACHER), ([[0.0, 1.0]] * 2, OTHER_TEACHER)]
)
def test_kd_with_one_hot_teacher_weights_is_kd_to_that_teacher(weights: list, teacher: list) -> None:
    value = KDLoss(temperature=4.0)(two_teacher_view(t64(weights))).item()
    assert value == pytest.approx(kd_loss(t64(STUDENT), t64(teacher), 4.0).item(), rel=1e-12)


def test_kd_without_teacher_weights_uses_teacher_logits() -> None:
    view = two_teacher_view(None)  # type: ignore[arg-type]
    mean_logits = (t64(TEACHER) + t64(OTHER_TEACHER)) / 2
    assert KDLoss(temperature=2.0)(view).item() == pytest.approx(kd_loss(t64(STUDENT), mean_logits, 2.0).item())


def test_mixed_weights_per_row_pick_each_rows_teacher() -> None:
    # row 0 all teacher a, row 1 all teacher b: each row's KL is against its own teacher
    value = KDLoss(temperature=1.0)(two_teacher_view(t64([[1.0, 0.0], [0.0, 1.0]]))).item()
    expected = (
        kl_by_hand(softmax_by_hand(TEACHER[0], 1.0), softmax_by_hand(STUDENT[0], 1.0))
        + kl_by_hand(softmax_by_hand(OTHER_TEACHER[1], 1.0), softmax_by_hand(STUDENT[1], 1.0))
    ) / 2
    assert value == pytest.approx(expected, rel=1e-12)


def test_kd_teacher_weights_gradient_is_finite_with_zero_weights() -> None:
    s = t64(STUDENT).requires_grad_()
    a, b = t64(TEACHER), t64(OTHER_TEACHER)
    weights = t64([[1.0, 0.0], [0.3, 0.7]]).requires_grad_()
    view = make_view(s, a, teachers={"a": a, "b": b}, teacher_weights=weights)
    KDLoss(temperature=2.0)(view).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(weights.grad).all()


def test_kd_refuses_teacher_weights_of_the_wrong_shape() -> None:
    with pytest.raises(DistillError, match="teacher_weights"):
        KDLoss()(two_teacher_view(torch.full((2, 3), 1 / 3, dtype=torch.float64)))


def test_dkd_and_dist_use_the_teacher_mixture() -> None:
    # one-hot weights on teacher b: DKD and DIST equal their values against b alone
    view = two_teacher_view(t64([[0.0, 1.0], [0.0, 1.0]]))
    view = dataclasses.replace(view, targets=torch.tensor(LABELS))
    alone = make_view(t64(STUDENT), t64(OTHER_TEACHER), targets=torch.tensor(LABELS))
    for term in (DKDLoss(warmup_epochs=0), DISTLoss()):
        assert term(view).item() == pytest.approx(term(alone).item(), rel=1e-9)


# -- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "cls", "fields"),
    [
        ("dkd", DKDLoss, {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0}),
        ("dist", DISTLoss, {"weight": 1.0, "beta": 1.0, "gamma": 1.0, "temperature": 1.0}),
        ("kd", KDLoss, {"weight": 0.9, "temperature": 4.0, "standardize": False}),
    ],
)
def test_terms_instantiate_from_config(option: str, cls: type, fields: dict, tmp_path: Path) -> None:
    cfg = compose_config([f"distill=[{option}]", f"paths.output_dir={tmp_path}"])
    term = hydra.utils.instantiate(cfg.distill[option])
    assert type(term) is cls
    for name, value in fields.items():
        assert getattr(term, name) == value, name


def test_kd_standardize_switch_from_the_command_line(tmp_path: Path) -> None:
    cfg = compose_config(["distill=[kd]", "distill.kd.standardize=true", f"paths.output_dir={tmp_path}"])
    assert hydra.utils.instantiate(cfg.distill.kd).standardize is True
