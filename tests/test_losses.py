"""Loss terms: KD checked against hand arithmetic, the hard loss on partly labelled batches,
argument validation, and the FitNet connector's choice of layer."""

from __future__ import annotations

import math

import pytest
import torch
from tests.builders import softmax_by_hand
from tests.builders import step_view as make_view
from torch import Tensor, nn

from distill.data.base import UNLABELLED
from distill.errors import DistillError
from distill.losses import FitNetLoss, HardLabelLoss, KDLoss, LossTerm, StepView, kd_loss
from distill.losses.feature import connector

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]


# -- hand arithmetic, no torch ------------------------------------------------------------------


def kd_by_hand(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T² · mean over rows of KL(p_teacher ‖ p_student) = Σ_i p_t,i · (log p_t,i − log p_s,i)."""
    kls = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s = softmax_by_hand(s_row, temperature)
        p_t = softmax_by_hand(t_row, temperature)
        kls.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True)))
    return temperature**2 * sum(kls) / len(kls)


def cross_entropy_by_hand(row: list[float], label: int) -> float:
    return -math.log(softmax_by_hand(row, 1.0)[label])


# -- KD ----------------------------------------------------------------------------------------


def test_kd_hand_arithmetic_is_right() -> None:
    # A fixed point for the hand formula itself: one row, student uniform, teacher one-hot-ish.
    # p_t = softmax([ln 2, 0]) = [2/3, 1/3], p_s = [1/2, 1/2]
    # KL = 2/3·ln(4/3) + 1/3·ln(2/3)
    expected = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert kd_by_hand([[0.0, 0.0]], [[math.log(2), 0.0]], 1.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0566330, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_hand_computation(temperature: float) -> None:
    value = kd_loss(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), temperature)
    assert value.ndim == 0
    assert value.item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, temperature), rel=1e-9)


def test_kd_loss_known_values() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    # Numbers from kd_by_hand, written out so a change to both would still be caught.
    assert kd_loss(s, t, 1.0).item() == pytest.approx(1.6772885, rel=1e-5)
    assert kd_loss(s, t, 4.0).item() == pytest.approx(2.5682472, rel=1e-5)


def test_kd_loss_scales_with_temperature_squared() -> None:
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    kl_at_4 = kd_by_hand(STUDENT, TEACHER, 4.0) / 16.0  # plain KL of the T=4 distributions
    assert kd_loss(s, t, 4.0).item() == pytest.approx(16.0 * kl_at_4, rel=1e-9)
    # and the T² factor is really there: without it the value would be 16 times smaller
    assert kd_loss(s, t, 4.0).item() / kl_at_4 == pytest.approx(16.0, rel=1e-9)


def test_kd_loss_is_averaged_over_the_batch_not_classes() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    doubled = kd_loss(torch.cat([s, s]), torch.cat([t, t]), 2.0)
    assert doubled.item() == pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_is_zero_for_identical_logits(temperature: float) -> None:
    logits = torch.tensor(STUDENT)
    assert kd_loss(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_is_positive_for_different_logits() -> None:
    assert kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 4.0).item() > 0.1


def test_kd_term_uses_the_mean_teacher_logits_and_its_temperature() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    term = KDLoss(weight=0.5, temperature=4.0)
    assert term.temperature == 4.0 and term.weight == 0.5
    assert term(make_view(s, t)).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, 4.0), rel=1e-5)
    assert KDLoss(temperature=1)(make_view(s, t)).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, 1.0), rel=1e-5)


def test_kd_term_zero_when_student_equals_teacher() -> None:
    s = torch.tensor(STUDENT)
    assert KDLoss(temperature=3.0)(make_view(s, s.clone())).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradient_reaches_student_logits_only() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER)
    KDLoss(temperature=2.0)(make_view(s, t)).backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0
    # the gradient of a softmax-based loss sums to zero over the classes of each row
    torch.testing.assert_close(s.grad.sum(-1), torch.zeros(2), atol=1e-6, rtol=0)


def test_kd_gradient_is_zero_at_the_teacher() -> None:
    s = torch.tensor(TEACHER, requires_grad=True)
    KDLoss(temperature=2.0)(make_view(s, torch.tensor(TEACHER))).backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, -4, float("nan"), float("inf"), "4"])
def test_kd_refuses_bad_temperature(temperature: object) -> None:
    with pytest.raises(DistillError, match="temperature"):
        KDLoss(temperature=temperature)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [KDLoss, HardLabelLoss])
@pytest.mark.parametrize("weight", [-0.1, -1, float("nan"), float("inf")])
def test_terms_refuse_bad_weight(cls: type[LossTerm], weight: float) -> None:
    with pytest.raises(DistillError, match="weight"):
        cls(weight=weight)


def test_fitnet_refuses_negative_weight() -> None:
    with pytest.raises(DistillError, match="weight"):
        FitNetLoss("a", "b", weight=-2.0)


@pytest.mark.parametrize("cls", [KDLoss, HardLabelLoss])
def test_zero_weight_is_allowed(cls: type[LossTerm]) -> None:
    assert cls(weight=0).weight == 0.0


# -- hard labels -------------------------------------------------------------------------------

LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [-0.5, 0.3, 1.7], [1.0, 1.0, 1.0]]


def test_hard_label_loss_all_labelled_equals_cross_entropy() -> None:
    targets = [0, 1, 2, 1]
    value = HardLabelLoss()(make_view(torch.tensor(LOGITS), targets=torch.tensor(targets)))
    expected = sum(cross_entropy_by_hand(r, y) for r, y in zip(LOGITS, targets, strict=True)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_hard_label_loss_averages_over_labelled_rows_only() -> None:
    targets = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    value = HardLabelLoss()(make_view(torch.tensor(LOGITS), targets=targets))
    expected = (cross_entropy_by_hand(LOGITS[0], 0) + cross_entropy_by_hand(LOGITS[2], 2)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # and that is not the mean over the whole batch
    assert value.item() != pytest.approx(expected / 2, rel=1e-3)


def test_hard_label_loss_with_smoothing_matches_cross_entropy_on_labelled_rows() -> None:
    logits = torch.tensor(LOGITS)
    targets = torch.tensor([0, UNLABELLED, 2, 1])
    mask = targets != UNLABELLED
    value = HardLabelLoss(label_smoothing=0.1)(make_view(logits, targets=targets))
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hard_label_loss_is_zero_without_labelled_rows() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    targets = torch.full((4,), UNLABELLED)
    value = HardLabelLoss()(make_view(logits, targets=targets))
    assert torch.isfinite(value)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()


def test_hard_label_loss_gradient_flows_to_labelled_rows_only() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    targets = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    HardLabelLoss()(make_view(logits, targets=targets)).backward()
    grad = logits.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert (grad[1] == 0).all() and (grad[3] == 0).all()
    # d/dz CE = (softmax − onehot) / n_labelled
    p0 = torch.tensor(softmax_by_hand(LOGITS[0], 1.0))
    torch.testing.assert_close(grad[0], (p0 - torch.tensor([1.0, 0.0, 0.0])) / 2, atol=1e-6, rtol=1e-5)


# -- FitNet and its connector -----------------------------------------------------------------


def fitnet_view(student: Tensor, teacher: Tensor, teacher_name: str = "teacher") -> StepView:
    logits = torch.zeros(len(student), 3)
    return make_view(
        logits,
        logits,
        student_features={"s": student},
        teacher_features={teacher_name: {"t": teacher}},
    )


def test_connector_is_identity_for_equal_shapes() -> None:
    assert isinstance(connector(torch.zeros(4, 8), torch.zeros(4, 8), "here"), nn.Identity)
    assert isinstance(connector(torch.zeros(4, 3, 5), torch.zeros(2, 3, 5), "here"), nn.Identity)


def test_connector_is_linear_for_vectors() -> None:
    layer = connector(torch.zeros(4, 6), torch.zeros(4, 10), "here")
    assert isinstance(layer, nn.Linear)
    assert (layer.in_features, layer.out_features) == (6, 10)


def test_connector_is_1x1_conv1d_for_sequences() -> None:
    layer = connector(torch.zeros(4, 3, 7), torch.zeros(4, 5, 7), "here")
    assert isinstance(layer, nn.Conv1d)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (3, 5, (1,))
    assert layer(torch.zeros(4, 3, 7)).shape == (4, 5, 7)


def test_connector_is_1x1_conv2d_for_images() -> None:
    layer = connector(torch.zeros(2, 3, 4, 4), torch.zeros(2, 8, 4, 4), "here")
    assert isinstance(layer, nn.Conv2d)
    assert layer.kernel_size == (1, 1)
    assert layer(torch.zeros(2, 3, 4, 4)).shape == (2, 8, 4, 4)


@pytest.mark.parametrize(
    "student_shape,teacher_shape",
    [
        ((4, 3, 7), (4, 3, 9)),  # different length, same channels
        ((4, 3, 7), (4, 5, 9)),  # different length and channels
        ((4, 6), (4, 3, 2)),  # different rank
        ((2, 3, 4, 4), (2, 3, 2, 2)),  # different spatial size
        ((2, 1, 2, 2, 2), (2, 3, 2, 2, 2)),  # 3-D volumes: no connector
    ],
)
def test_connector_refuses_unconnectable_shapes(student_shape: tuple, teacher_shape: tuple) -> None:
    with pytest.raises(DistillError) as err:
        connector(torch.zeros(student_shape), torch.zeros(teacher_shape), "fitnet (a -> b)")
    message = str(err.value)
    assert "fitnet (a -> b)" in message
    assert str(list(student_shape[1:])) in message and str(list(teacher_shape[1:])) in message


def test_fitnet_equal_shapes_is_plain_mse() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    term = FitNetLoss("s", "t")
    assert term.student_layers == ("s",) and term.teacher_layers == ("t",)
    view = fitnet_view(s, t)
    term.build(view)
    assert isinstance(term.connector, nn.Identity)
    assert term(view).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    assert term(fitnet_view(t, t)).item() == 0.0


def test_fitnet_builds_linear_for_vector_mismatch_and_trains_it() -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 10)
    term = FitNetLoss("s", "t")
    view = fitnet_view(s, t)
    term.build(view)
    assert isinstance(term.connector, nn.Linear)
    assert (term.connector.in_features, term.connector.out_features) == (6, 10)
    # the connector's weights are registered, so they train with the student
    assert {n for n, _ in term.named_parameters()} == {"connector.weight", "connector.bias"}
    loss = term(view)
    expected = ((term.connector(s) - t) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert term.connector.weight.grad is not None and term.connector.weight.grad.abs().sum() > 0


def test_fitnet_builds_conv1d_for_channel_mismatch() -> None:
    term = FitNetLoss("s", "t")
    view = fitnet_view(torch.randn(2, 4, 9), torch.randn(2, 16, 9))
    term.build(view)
    assert isinstance(term.connector, nn.Conv1d)
    assert term.connector.kernel_size == (1,)
    assert (term.connector.in_channels, term.connector.out_channels) == (4, 16)
    assert torch.isfinite(term(view))


def test_fitnet_refuses_different_spatial_length() -> None:
    term = FitNetLoss("s", "t")
    with pytest.raises(DistillError, match=r"fitnet \(s -> t\).*\[4, 9\].*\[4, 5\]"):
        term.build(fitnet_view(torch.randn(2, 4, 9), torch.randn(2, 4, 5)))


def test_fitnet_picks_the_named_teacher() -> None:
    s = torch.zeros(2, 3)
    view = make_view(
        torch.zeros(2, 3),
        teachers={"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)},
        student_features={"s": s},
        teacher_features={"a": {"t": torch.zeros(2, 3)}, "b": {"t": torch.ones(2, 3)}},
    )
    first, named = FitNetLoss("s", "t"), FitNetLoss("s", "t", teacher="b")
    first.build(view)
    named.build(view)
    assert first(view).item() == 0.0  # teacher 'a' by default
    assert named(view).item() == 1.0


def test_fitnet_unknown_teacher_raises() -> None:
    term = FitNetLoss("s", "t", teacher="nobody")
    with pytest.raises(DistillError, match="no teacher named 'nobody'.*teacher"):
        term.build(fitnet_view(torch.zeros(2, 3), torch.zeros(2, 3)))
