"""Attention transfer and the relation-based terms (RKD, SP, PKT, CC): each checked against arithmetic
written out by hand on three samples, for its invariances, gradients and configs, and in training."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from tests.builders import step_view
from tests.conftest import compose_config
from torch import Tensor

from distill.data import TensorBatches
from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.losses.feature import ATLoss
from distill.losses.relation import CCLoss, PKTLoss, RKDLoss, SPLoss
from distill.modules import DistillationModule
from distill.nets import MLP, ConvNet1d

# Three samples; the student is 3-D, the teacher 2-D (relation terms compare batch × batch relations).
STUDENT = [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [-1.0, 2.0, 0.0]]
TEACHER = [[2.0, 1.0], [0.0, 1.0], [-1.0, -0.5]]
RELATION_OPTIONS = ["rkd", "sp", "pkt", "cc"]
OPTIONS = ["at", *RELATION_OPTIONS]
ADAM = functools.partial(torch.optim.Adam, lr=1e-3)


def make_view(student: Tensor, teacher: Tensor, s_name: str = "s", t_name: str = "t") -> StepView:
    logits = torch.zeros(len(student), 10)
    return step_view(logits, student_features={s_name: student}, teacher_features={"teacher": {t_name: teacher}})


def term_value(term: LossTerm, student: Tensor, teacher: Tensor) -> Tensor:
    view = make_view(student, teacher)
    term.build(view)
    return term(view)


def relation_term(option: str, **kwargs) -> LossTerm:
    cls = {"rkd": RKDLoss, "sp": SPLoss, "pkt": PKTLoss, "cc": CCLoss}[option]
    return cls("s", "t", **kwargs)


def f64(rows: list) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -- hand arithmetic, plain Python ----------------------------------------------------------------


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def length(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def unit(a: list[float]) -> list[float]:
    n = length(a)
    return [x / n for x in a]


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rkd_distance_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    """Distances divided by their mean over the n(n-1) ordered pairs i != j; smooth L1 averaged over n²."""
    n = len(s)

    def normalised(e: list[list[float]]) -> list[list[float]]:
        d = [[length(minus(e[i], e[j])) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[x / mean for x in row] for row in d]

    ds, dt = normalised(s), normalised(t)
    return sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2


def rkd_angle_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    """cos of the angle at e_i between e_j and e_k (0 when j or k is i); smooth L1 averaged over n³."""
    n = len(s)

    def cosine(e: list[list[float]], i: int, j: int, k: int) -> float:
        if j == i or k == i:
            return 0.0
        return dot(unit(minus(e[j], e[i])), unit(minus(e[k], e[i])))

    triples = list(itertools.product(range(n), repeat=3))
    return sum(smooth_l1(cosine(s, *ijk) - cosine(t, *ijk)) for ijk in triples) / n**3


def sp_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    """Gram matrices f fᵀ, each row divided by its length; squared differences summed, over n²."""
    n = len(s)

    def rows(e: list[list[float]]) -> list[list[float]]:
        return [unit([dot(e[i], e[j]) for j in range(n)]) for i in range(n)]

    gs, gt = rows(s), rows(t)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def pkt_by_hand(s: list[list[float]], t: list[list[float]], eps: float = 1e-7) -> float:
    """Rows divided by (length + eps), as the authors' code does; p_{j|i} = ((cos_ij + 1) / 2) / Σ_k ((cos_ik + 1) / 2);
    mean over n² of p_t · log((p_t + eps) / (p_s + eps))."""
    n = len(s)

    def probabilities(e: list[list[float]]) -> list[list[float]]:
        e = [[x / (length(row) + eps) for x in row] for row in e]
        shifted = [[(dot(e[i], e[j]) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[x / sum(row) for x in row] for row in shifted]

    ps, pt = probabilities(s), probabilities(t)
    kl = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n))
    return kl / n**2


def cc_by_hand(s: list[list[float]], t: list[list[float]], gamma: float = 0.4, order: int = 2) -> float:
    """C_ij = Σ_{p<=P} exp(-2γ) (2γ)^p / p! · cos_ij^p; Σ (C_s - C_t)² / n²."""
    n = len(s)

    def correlation(e: list[list[float]]) -> list[list[float]]:
        cos = [[dot(unit(e[i]), unit(e[j])) for j in range(n)] for i in range(n)]
        return [
            [
                sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c**p for p in range(order + 1))
                for c in row
            ]
            for row in cos
        ]

    cs, ct = correlation(s), correlation(t)
    return sum((cs[i][j] - ct[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def at_by_hand(s: list, t: list) -> float:
    """One layer pair of [n][channels][positions]: a = channel mean of f², divided by its length per
    sample; mean over samples and positions of (a_s - a_t)²."""

    def attention(sample: list[list[float]]) -> list[float]:
        positions = len(sample[0])
        return unit([sum(ch[k] ** 2 for ch in sample) / len(sample) for k in range(positions)])

    total, count = 0.0, 0
    for fs, ft in zip(s, t, strict=True):
        a_s, a_t = attention(fs), attention(ft)
        total += sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True))
        count += len(a_s)
    return total / count


def test_hand_formulas_on_closed_form_cases() -> None:
    # Collinear student (0,0),(1,0),(2,0) against a right-angled teacher (0,0),(1,0),(0,1).
    s, t = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    # angles: at vertex 0: cos 1 vs 0; vertex 1: -1 vs 1/√2; vertex 2: 1 vs 1/√2; each twice (j, k swapped):
    # 2 · (0.5 + (1 + 1/√2 - 0.5) + 0.5 (1 - 1/√2)²) = 3.5 over 27 entries.
    assert rkd_angle_by_hand(s, t) == pytest.approx(7 / 54, rel=1e-12)
    # distances: student 1, 2, 1 (mean 4/3) → 3/4, 3/2, 3/4; teacher 1, 1, √2 (mean (2+√2)/3) → k, k, √2 k.
    k = 3 / (2 + math.sqrt(2))
    diffs = [0.75 - k, 1.5 - k, 0.75 - math.sqrt(2) * k]
    assert rkd_distance_by_hand(s, t) == pytest.approx(2 * sum(0.5 * d * d for d in diffs) / 9, rel=1e-12)
    # SP: G_s rows [1,0,1]/√2, [0,1,1]/√2, [1,1,2]/√6; G_t rows [1,1,0]/√2, [1,1,0]/√2, [0,0,1].
    assert sp_by_hand([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) == pytest.approx(
        (4 - 4 / math.sqrt(6)) / 9, rel=1e-12
    )
    # AT: every student sample attends to position 0 only, every teacher sample to position 1 only.
    assert at_by_hand([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]] * 3, [[[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]] * 3) == (
        pytest.approx(2 / 3, rel=1e-12)
    )


# -- each term against the hand arithmetic ----------------------------------------------------------


def test_rkd_distance_and_angle_match_hand_computation() -> None:
    s, t = f64(STUDENT), f64(TEACHER)
    distance = term_value(RKDLoss("s", "t", distance_weight=1.0, angle_weight=0.0), s, t).item()
    angle = term_value(RKDLoss("s", "t", distance_weight=0.0, angle_weight=1.0), s, t).item()
    assert distance == pytest.approx(rkd_distance_by_hand(STUDENT, TEACHER), rel=1e-9)
    assert angle == pytest.approx(rkd_angle_by_hand(STUDENT, TEACHER), rel=1e-9)
    both = term_value(RKDLoss("s", "t"), s, t).item()  # the paper's 25 and 50
    assert both == pytest.approx(
        25 * rkd_distance_by_hand(STUDENT, TEACHER) + 50 * rkd_angle_by_hand(STUDENT, TEACHER), rel=1e-9
    )
    assert distance > 0.01 and angle > 0.01


def test_rkd_closed_form_values() -> None:
    s, t = f64([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), f64([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    angle = term_value(RKDLoss("s", "t", distance_weight=0.0, angle_weight=1.0), s, t).item()
    assert angle == pytest.approx(7 / 54, rel=1e-9)
    distance = term_value(RKDLoss("s", "t", distance_weight=1.0, angle_weight=0.0), s, t).item()
    assert distance == pytest.approx(0.0716992, rel=1e-5)  # rkd_distance_by_hand, written out


def test_sp_matches_hand_computation() -> None:
    value = term_value(SPLoss("s", "t"), f64(STUDENT), f64(TEACHER)).item()
    assert value == pytest.approx(sp_by_hand(STUDENT, TEACHER), rel=1e-9)
    closed = term_value(SPLoss("s", "t"), f64([[1, 0], [0, 1], [1, 1]]), f64([[1, 0], [1, 0], [0, 1]])).item()
    assert closed == pytest.approx((4 - 4 / math.sqrt(6)) / 9, rel=1e-9)


def test_pkt_matches_hand_computation() -> None:
    value = term_value(PKTLoss("s", "t"), f64(STUDENT), f64(TEACHER)).item()
    assert value == pytest.approx(pkt_by_hand(STUDENT, TEACHER), rel=1e-9)
    assert value > 1e-3
    # p_t = [[.4,.2,.4],[.25,.5,.25],[.4,.2,.4]] against uniform student rows (all samples identical)
    pt = [[0.4, 0.2, 0.4], [0.25, 0.5, 0.25], [0.4, 0.2, 0.4]]
    expected = sum(p * math.log(p * 3) for row in pt for p in row) / 9
    same = term_value(PKTLoss("s", "t"), f64([[1, 1]] * 3), f64([[1, 0], [0, 1], [1, 0]])).item()
    assert same == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gamma,order", [(0.4, 2), (0.4, 1), (1.0, 3)])
def test_cc_matches_hand_computation(gamma: float, order: int) -> None:
    value = term_value(CCLoss("s", "t", gamma=gamma, order=order), f64(STUDENT), f64(TEACHER)).item()
    assert value == pytest.approx(cc_by_hand(STUDENT, TEACHER, gamma, order), rel=1e-9)
    assert value > 1e-4


def test_cc_order_changes_the_value() -> None:
    s, t = f64(STUDENT), f64(TEACHER)
    values = {p: term_value(CCLoss("s", "t", order=p), s, t).item() for p in (1, 2, 3)}
    assert values[1] != pytest.approx(values[2], rel=1e-3) and values[2] != pytest.approx(values[3], rel=1e-3)


# AT: three samples, two channels, three positions (student) against three channels (teacher).
AT_STUDENT = [
    [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]],
    [[0.0, 3.0, 1.0], [1.0, 1.0, 1.0]],
    [[-2.0, 0.5, 0.0], [0.0, 1.0, -1.0]],
]
AT_TEACHER = [
    [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, -1.0, 0.5]],
    [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [1.0, 0.0, 1.0]],
    [[0.0, 0.0, 1.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
]


def test_at_matches_hand_computation_and_sums_layer_pairs() -> None:
    s, t = f64(AT_STUDENT), f64(AT_TEACHER)
    one = term_value(ATLoss("s", "t"), s, t).item()
    assert one == pytest.approx(at_by_hand(AT_STUDENT, AT_TEACHER), rel=1e-9)
    assert one > 1e-3
    # two pairs: the first again, and a second pair on 2-D maps ([3, 2, 2, 2] vs [3, 3, 2, 2])
    s2 = (torch.arange(24, dtype=torch.float64) % 5).reshape(3, 2, 2, 2)
    t2 = (torch.arange(36, dtype=torch.float64) % 7 - 3).reshape(3, 3, 2, 2)
    view = step_view(
        torch.zeros(3, 10), student_features={"s": s, "s2": s2}, teacher_features={"teacher": {"t": t, "t2": t2}}
    )
    term = ATLoss(["s", "s2"], ["t", "t2"])
    term.build(view)
    second = at_by_hand(s2.flatten(2).tolist(), t2.flatten(2).tolist())  # positions flattened
    assert second > 1e-3
    assert term(view).item() == pytest.approx(at_by_hand(AT_STUDENT, AT_TEACHER) + second, rel=1e-9)


def test_at_closed_form_value() -> None:
    s = f64([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]] * 3)
    t = f64([[[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]] * 3)
    assert term_value(ATLoss("s", "t"), s, t).item() == pytest.approx(2 / 3, rel=1e-9)


# -- zero at the teacher, and the invariances that truly hold ----------------------------------------


def rotation(d: int, seed: int = 0) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def features(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_are_zero_when_student_equals_teacher(option: str) -> None:
    t = features(5, 6)
    assert term_value(relation_term(option), t.clone(), t).item() == pytest.approx(0.0, abs=1e-12)


def test_at_is_zero_when_student_equals_teacher() -> None:
    t = features(4, 3, 5)
    assert term_value(ATLoss("s", "t"), t.clone(), t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_ignore_a_rotation(option: str) -> None:
    t = features(5, 6)
    assert term_value(relation_term(option), t @ rotation(6), t).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_ignore_a_global_scaling(option: str) -> None:
    t = features(5, 6)
    assert term_value(relation_term(option), 3.7 * t, t).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_ignores_translation_and_similarity_transforms() -> None:
    t = features(6, 4)
    s = 0.2 * t @ rotation(4) + torch.tensor([5.0, -3.0, 1.0, 2.0], dtype=torch.float64)
    assert term_value(RKDLoss("s", "t"), s, t).item() == pytest.approx(0.0, abs=1e-9)
    # the distance term alone is scale-free too
    assert term_value(RKDLoss("s", "t", angle_weight=0.0), 9.0 * t, t).item() == pytest.approx(0.0, abs=1e-10)


SAMPLE_SCALES = torch.tensor([[0.5], [2.0], [3.0], [1.0], [7.0]], dtype=torch.float64)


@pytest.mark.parametrize("option", ["pkt", "cc"])
def test_cosine_based_terms_ignore_per_sample_scaling(option: str) -> None:
    t = features(5, 6)
    s = SAMPLE_SCALES * (t @ rotation(6))
    assert term_value(relation_term(option), s, t).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("option", ["rkd", "sp"])
def test_distance_and_gram_terms_see_per_sample_scaling(option: str) -> None:
    # SP normalises each Gram row, which removes sample i's own scale but not the scales of the
    # samples it is compared with (column j still carries d_j): SP is NOT per-sample scale invariant.
    t = features(5, 6)
    assert term_value(relation_term(option), SAMPLE_SCALES * t, t).item() > 1e-3


def test_at_ignores_per_sample_scaling_and_channel_count() -> None:
    t = features(4, 3, 5)
    scaled = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64).view(4, 1, 1) * t
    assert term_value(ATLoss("s", "t"), scaled, t).item() == pytest.approx(0.0, abs=1e-12)
    # the teacher's channels repeated twice and permuted: same channel mean of f², same attention
    wide = torch.cat([t, t], 1)[:, torch.randperm(6, generator=torch.Generator().manual_seed(0))]
    assert term_value(ATLoss("s", "t"), t, wide).item() == pytest.approx(0.0, abs=1e-12)
    assert term_value(ATLoss("s", "t"), features(4, 3, 5, seed=2), t).item() > 1e-3


# -- gradients, shapes, batch sizes ------------------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_gradients_reach_the_student_features(option: str) -> None:
    shape = (5, 3, 4) if option == "at" else (5, 6)
    s = features(*shape, seed=3).requires_grad_(True)
    t = features(*shape, seed=4)
    term = ATLoss("s", "t") if option == "at" else relation_term(option)
    value = term_value(term, s, t)
    value.backward()
    assert value.item() > 0
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_rkd_gradient_is_finite_with_duplicate_samples() -> None:
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], requires_grad=True)
    value = term_value(RKDLoss("s", "t"), s, features(4, 5).float())
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_compare_embeddings_of_different_widths(option: str) -> None:
    s = features(6, 4).requires_grad_(True)
    # the teacher is the student padded to 7 dims and rotated: the same relations, so a zero loss
    padded = torch.cat([s.detach(), torch.zeros(6, 3, dtype=torch.float64)], 1) @ rotation(7)
    assert term_value(relation_term(option), s, padded).item() == pytest.approx(0.0, abs=1e-10)
    value = term_value(relation_term(option), s, features(6, 7, seed=5))
    value.backward()
    assert value.item() > 1e-4 and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_flatten_feature_maps(option: str) -> None:
    s, t = features(4, 2, 3), features(4, 5, seed=2)
    assert term_value(relation_term(option), s, t).item() == pytest.approx(
        term_value(relation_term(option), s.flatten(1), t).item(), rel=1e-12
    )


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_are_finite_on_a_batch_of_one(option: str) -> None:
    value = term_value(relation_term(option), features(1, 4), features(1, 7))
    assert value.item() == pytest.approx(0.0, abs=1e-12)


# -- argument checks ---------------------------------------------------------------------------------


def test_at_refuses_features_without_a_spatial_axis() -> None:
    with pytest.raises(DistillError, match=r"student layer gives shape \[3, 5\] with no spatial axis"):
        term_value(ATLoss("s", "t"), features(3, 5), features(3, 2, 5))
    with pytest.raises(DistillError, match="teacher layer gives shape"):
        term_value(ATLoss("s", "t"), features(3, 2, 5), features(3, 5))


def test_at_refuses_mismatched_spatial_sizes_naming_both_shapes() -> None:
    with pytest.raises(DistillError, match=r"student features of shape \[3, 2, 5\] and teacher features of shape"):
        term_value(ATLoss("s", "t"), features(3, 2, 5), features(3, 4, 6))


def test_at_refuses_unpaired_layer_lists() -> None:
    with pytest.raises(DistillError, match="2 student and 1 teacher"):
        ATLoss(["a", "b"], ["c"])
    with pytest.raises(DistillError, match="student_layers"):
        ATLoss([], [])


def test_at_takes_a_single_path_or_a_list() -> None:
    assert ATLoss("a", "b").student_layers == ("a",)
    assert ATLoss(["a", "c"], ["b", "d"]).teacher_layers == ("b", "d")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ATLoss("s", "t", p=0),
        lambda: ATLoss("s", "t", p=float("nan")),
        lambda: RKDLoss("s", "t", distance_weight=-1.0),
        lambda: RKDLoss("s", "t", angle_weight=float("inf")),
        lambda: RKDLoss("s", "t", distance_weight=0.0, angle_weight=0.0),
        lambda: PKTLoss("s", "t", eps=0.0),
        lambda: CCLoss("s", "t", gamma=0.0),
        lambda: CCLoss("s", "t", gamma=-0.4),
        lambda: CCLoss("s", "t", order=0),
        lambda: CCLoss("s", "t", order=2.5),
        lambda: SPLoss("s", "t", weight=-1.0),
    ],
)
def test_bad_hyper_parameters_are_refused(make) -> None:
    with pytest.raises(DistillError):
        make()


# -- configs -----------------------------------------------------------------------------------------

EXPECTED = {
    "at": (ATLoss, 1000.0, {"p": 2.0}),
    "rkd": (RKDLoss, 1.0, {"distance_weight": 25.0, "angle_weight": 50.0}),
    "sp": (SPLoss, 3000.0, {}),
    "pkt": (PKTLoss, 30000.0, {}),
    "cc": (CCLoss, 1.0, {"gamma": 0.4, "order": 2}),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_config_composes_and_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"distill=[{option}]", f"paths.output_dir={tmp_path}"])
    assert list(cfg.distill) == [option]
    term = hydra.utils.instantiate(cfg.distill[option])
    cls, weight, params = EXPECTED[option]
    assert type(term) is cls and term.weight == weight
    assert all(getattr(term, k) == v for k, v in params.items())
    if option == "at":
        assert term.student_layers == ("blocks.2",) and term.teacher_layers == ("blocks.2",)
    else:
        assert term.student_layers == ("features",) and term.teacher_layers == ("head.0",)


def test_at_config_recipe_for_a_convolutional_student_builds(tmp_path: Path) -> None:
    overrides = [
        "distill=[hard,kd,at]",
        "student.net._target_=distill.nets.ConvNet1d",
        "~student.net.hidden",
        "+student.net.channels=[8,8,8]",
        f"paths.output_dir={tmp_path}",
    ]
    cfg = compose_config(overrides)
    student = hydra.utils.instantiate(cfg.student.net)
    teacher = hydra.utils.instantiate(cfg.teacher.cnn.net)
    terms = {name: hydra.utils.instantiate(node) for name, node in cfg.distill.items()}
    module = DistillationModule(
        student, {"cnn": teacher}, terms, ADAM, num_classes=10, example_input=torch.randn(2, *cfg.data.input_shape)
    )
    view_x = torch.randn(4, 40)
    batch = {"x": view_x, "y": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)}
    value = module.terms["at"](module._view(batch, module.net(view_x), module._run_teachers(view_x)))
    assert torch.isfinite(value) and value.item() > 0


# -- in training -------------------------------------------------------------------------------------


def random_batches(n: int = 96) -> TensorBatches:
    g = torch.Generator().manual_seed(0)
    return TensorBatches(torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g), batch_size=32)


class TermValues(L.Callback):
    """Each training step's term values, as the module keeps them until it sums them (every FLUSH_EVERY steps)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert pl_module._pending, "fewer steps than FLUSH_EVERY: this step's values are still held"
        self.steps.append({k: float(v) for k, v in zip(pl_module._names, pl_module._pending[-1], strict=True)})


def fit_fast(student, teacher, option: str, tmp_path: Path) -> tuple[DistillationModule, list[dict[str, float]]]:
    cfg = compose_config([f"distill=[{option}]", f"paths.output_dir={tmp_path}"])
    term = hydra.utils.instantiate(cfg.distill[option])
    torch.manual_seed(0)
    module = DistillationModule(student, {"cnn": teacher}, {option: term}, ADAM, 10, torch.randn(2, 40))
    before = [p.detach().clone() for p in module.net.parameters()]
    spy = TermValues()
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    trainer.fit(module, random_batches(), random_batches(32))
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, module.net.parameters(), strict=True))
    assert moved  # the step reached the student's weights
    return module, spy.steps


@pytest.mark.parametrize("option", RELATION_OPTIONS)
def test_relation_terms_train_on_their_default_layers(option: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    student, teacher = MLP((40,), 10), ConvNet1d((40,), 10, channels=(8, 8, 8))
    _, steps = fit_fast(student, teacher, option, tmp_path)
    assert len(steps) == 1
    value = steps[0][option]
    assert math.isfinite(value) and value > 0
    assert steps[0]["loss"] == pytest.approx(EXPECTED[option][1] * value, rel=1e-5)


def test_at_trains_with_a_convolutional_student(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student, teacher = ConvNet1d((40,), 10, channels=(4, 4, 4)), ConvNet1d((40,), 10, channels=(8, 8, 8))
    _, steps = fit_fast(student, teacher, "at", tmp_path)
    assert math.isfinite(steps[0]["at"]) and steps[0]["at"] > 0


def test_at_with_the_mlp_student_fails_when_the_module_is_built() -> None:
    with pytest.raises(DistillError, match="no spatial axis"):
        DistillationModule(
            MLP((40,), 10),
            {"cnn": ConvNet1d((40,), 10, channels=(8, 8, 8))},
            {"at": ATLoss("features", "blocks.2")},
            ADAM,
            10,
            torch.randn(2, 40),
        )


def test_default_relation_layers_fit_the_default_pair(tmp_path: Path) -> None:
    # the project's default student (MLP, hidden 100) and teacher (ConvNet1d, 128 channels) on [40]
    cfg = compose_config(["distill=[hard,rkd,sp,pkt,cc]", f"paths.output_dir={tmp_path}"])
    assert list(cfg.data.input_shape) == [40]
    student, teacher = hydra.utils.instantiate(cfg.student.net), hydra.utils.instantiate(cfg.teacher.cnn.net)
    terms = {name: hydra.utils.instantiate(node) for name, node in cfg.distill.items()}
    module = DistillationModule(student, {"cnn": teacher}, terms, ADAM, 10, torch.randn(2, 40))
    x = torch.randn(8, 40)
    module.net(x)
    teacher_out = module._run_teachers(x)
    assert module.student_taps.outputs["features"].shape == (8, 100)
    assert teacher_out["cnn"]["head.0"].shape == (8, 1280)
    view = module._view({"y": torch.zeros(8, dtype=torch.long), "index": torch.arange(8)}, module.net(x), teacher_out)
    for name in RELATION_OPTIONS:
        assert torch.isfinite(module.terms[name](view))
