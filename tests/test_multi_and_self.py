"""Multi-teacher strategies, Born-Again generations and teacherless self-distillation."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from tests.builders import softmax_by_hand as softmax
from tests.conftest import compose_config, tiny_job

from distill.errors import DistillError
from distill.losses import HardLabelLoss, KDLoss
from distill.losses.base import StepView
from distill.losses.multi_teacher import (
    ConfidenceWeighted,
    EntropyWeighted,
    MeanLogits,
    MeanLosses,
    confidence_weights,
    entropy_weights,
    mixture_logits,
)
from distill.losses.response import kd_loss
from distill.losses.self_distill import AuxiliaryHeadsLoss
from distill.modules import DistillationModule
from distill.nets import MLP
from distill.spine import run

A = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
B = torch.tensor([[0.0, 1.0, 0.0], [3.0, -1.0, 0.0]])


def entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in softmax(row))


def test_entropy_weights_by_hand() -> None:
    w = entropy_weights([A, B])
    for i in range(2):
        ha, hb = entropy(A[i].tolist()), entropy(B[i].tolist())
        expected = math.exp(-ha) / (math.exp(-ha) + math.exp(-hb))
        assert w[i, 0].item() == pytest.approx(expected, rel=1e-5)
        assert w[i].sum().item() == pytest.approx(1.0)
    assert w[0, 0] > w[0, 1]  # teacher A is the more confident one on sample 0


def test_confidence_weights_by_hand() -> None:
    targets = torch.tensor([0, -1])  # the second sample is unlabelled
    w = confidence_weights([A, B], targets)
    ce_a = -math.log(softmax(A[0].tolist())[0])
    ce_b = -math.log(softmax(B[0].tolist())[0])
    # K = 2: w_A = 1 - e^{CE_A} / (e^{CE_A} + e^{CE_B})
    assert w[0, 0].item() == pytest.approx(1 - math.exp(ce_a) / (math.exp(ce_a) + math.exp(ce_b)), rel=1e-5)
    assert w[0, 0] > w[0, 1]  # A puts more mass on the true class 0
    assert torch.allclose(w[1], torch.tensor([0.5, 0.5]))
    three = confidence_weights([A, B, A * 0], torch.tensor([1, 2]))
    assert torch.allclose(three.sum(1), torch.ones(2))


def test_mixture_logits_are_the_weighted_mixture_of_distributions() -> None:
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    mix = mixture_logits([A, B], w).softmax(-1)
    expected = 0.25 * A[0].softmax(-1) + 0.75 * B[0].softmax(-1)
    assert torch.allclose(mix[0], expected, atol=1e-6)
    assert torch.allclose(mix[1], A[1].softmax(-1), atol=1e-6)


def test_a_strategy_that_is_not_a_combination_is_refused() -> None:
    with pytest.raises(DistillError, match="multi_teacher must be a distill.losses.multi_teacher.TeacherCombination"):
        module_with("max", {"a": MLP((4,), 3, hidden=(8,))}, {"kd": KDLoss(1.0)})


def test_every_strategy_config_builds_its_combination() -> None:
    from tests.conftest import compose_config

    from distill.assembly import build

    kinds = {"mean_logits": MeanLogits, "mean_losses": MeanLosses, "entropy_weighted": EntropyWeighted,
             "ca_mkd": ConfidenceWeighted}  # fmt: skip
    for name, kind in kinds.items():
        assert type(build(compose_config([f"multi_teacher={name}"]).multi_teacher, "multi_teacher")) is kind
    assert MeanLosses.per_teacher_losses and not MeanLogits.per_teacher_losses


STRATEGIES = {"mean_logits": MeanLogits, "mean_losses": MeanLosses, "entropy_weighted": EntropyWeighted,
              "ca_mkd": ConfidenceWeighted}  # fmt: skip


def module_with(strategy: str, teachers: dict, terms: dict) -> DistillationModule:
    return DistillationModule(
        MLP((4,), 3, hidden=(8,)),
        teachers,
        terms,
        functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=3,
        example_input=torch.randn(2, 4),
        multi_teacher=STRATEGIES[strategy]() if strategy in STRATEGIES else strategy,
    )


def step_view(module: DistillationModule, x: torch.Tensor, y: torch.Tensor) -> StepView:
    return module._view({"y": y, "index": torch.arange(len(y))}, module.net(x), module._run_teachers(x))


@pytest.mark.parametrize("strategy", ["mean_logits", "mean_losses", "entropy_weighted", "ca_mkd"])
def test_each_strategy_gives_the_documented_kd_target(strategy: str) -> None:
    torch.manual_seed(0)
    t1, t2 = MLP((4,), 3, hidden=(8,)), MLP((4,), 3, hidden=(8,))
    kd = KDLoss(1.0, temperature=1.0)
    module = module_with(strategy, {"a": t1, "b": t2}, {"kd": kd})
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, -1, 1])
    view = step_view(module, x, y)
    za, zb, s = t1(x).detach(), t2(x).detach(), view.student_logits
    value = module._term_value(kd, view)
    if strategy == "mean_logits":
        expected = kd_loss(s, (za + zb) / 2, 1.0)
    elif strategy == "mean_losses":
        expected = (kd_loss(s, za, 1.0) + kd_loss(s, zb, 1.0)) / 2
    else:
        w = entropy_weights([za, zb]) if strategy == "entropy_weighted" else confidence_weights([za, zb], y)
        p = w[:, :1] * za.softmax(-1) + w[:, 1:] * zb.softmax(-1)
        expected = (p * (p.log() - s.log_softmax(-1))).sum(-1).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_auxiliary_heads_loss_by_its_formula() -> None:
    torch.manual_seed(0)
    term = AuxiliaryHeadsLoss(
        layers=["features.2"], deepest_layer="features", alpha=0.3, temperature=2.0, feature_weight=0.5
    )
    module = module_with("mean_logits", {}, {"byot": term, "hard": HardLabelLoss()})
    assert term.heads[0].weight.shape == (3, 8) and term.bottlenecks[0][0].weight.shape == (8, 8)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, -1, -1])
    view = step_view(module, x, y)
    assert view.teacher_logits is None
    shallow, deep = view.student_features["features.2"], view.student_features["features"]
    f = term.bottlenecks[0](shallow)
    q = term.heads[0](f)
    ce = torch.nn.functional.cross_entropy(q[:4], y[:4])
    p_final = (view.student_logits / 2).softmax(-1)
    kl = (p_final * (p_final.log() - (q / 2).log_softmax(-1))).sum(-1).mean() * 4
    expected = 0.7 * ce + 0.3 * kl + 0.5 * ((f - deep) ** 2).mean()
    assert term(view).item() == pytest.approx(expected.item(), rel=1e-5)
    assert not any(k.startswith(("heads", "bottlenecks")) for k in module.net.state_dict())


def test_a_term_that_needs_a_teacher_is_refused_without_one() -> None:
    with pytest.raises(DistillError, match="needs at least one teacher for the terms kd"):
        module_with("mean_logits", {}, {"hard": HardLabelLoss(), "kd": KDLoss()})


@pytest.mark.slow
def test_teacherless_self_distillation_job(tmp_path: Path) -> None:
    overrides = tiny_job(tmp_path, "teacher=[]", "distill=[hard,byot]", "distill.byot.layers=[features.0]")
    overrides = [o for o in overrides if not o.startswith("teacher.")]
    report = run(compose_config(overrides))
    assert [r["model"] for r in report["models"]] == ["baseline", "student"]
    assert "agreement" not in report["models"][1] and "gap_closed" not in report["summary"]


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", [False, True])
def test_born_again_generations(tmp_path: Path, ensemble: bool) -> None:
    overrides = tiny_job(tmp_path, "teacher=[]", "born_again.generations=2", f"born_again.ensemble={ensemble}")
    overrides = [o for o in overrides if not o.startswith("teacher.")]
    report = run(compose_config(overrides))
    names = [r["model"] for r in report["models"]]
    assert names == (["baseline", "gen1", "gen2", "student"] if ensemble else ["baseline", "gen1", "student"])
    rows = {r["model"]: r for r in report["models"]}
    assert rows["gen1"]["parameters"] == rows["student"]["parameters"] == rows["baseline"]["parameters"]
    assert 0 <= rows["student"]["agreement"] <= 1


def test_born_again_with_an_external_teacher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="born_again trains its own teachers"):
        run(compose_config(tiny_job(tmp_path, "born_again.generations=2")))
