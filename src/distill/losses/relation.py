"""Relation-based terms: the student matches how the teacher relates the samples of a batch.

Each term flattens its two features to `[batch, dim]` and compares `batch × batch` (or
`batch × batch × batch`) relations, so the student's and the teacher's dims may differ and no
connector is needed. Teacher features arrive without gradients; only the student's are trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.validate import integer, number


class RelationLoss(LossTerm):
    """A term on one (student layer, teacher layer) pair, both seen as `[batch, dim]` embeddings.

    Relations are taken among the first `max_samples` rows of each batch (all rows when None).
    Batches are shuffled, so this is a fresh random subset every step: it keeps the cost at
    O(max_samples²) when the student trains with large batches, and matches the batch sizes
    (64–256) the relation papers used.
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        teacher: str | None = None,
        weight: float = 1.0,
        max_samples: int | None = 512,
    ) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.teacher = teacher
        self.max_samples = integer(max_samples, f"{type(self).__name__}: max_samples", minimum=2, allow_none=True)

    def embeddings(self, view: StepView) -> tuple[Tensor, Tensor]:
        s, t = self.feature_pair(view)
        if self.max_samples is not None:
            s, t = s[: self.max_samples], t[: self.max_samples]
        if len(s) != len(t):
            raise DistillError(
                f"{type(self).__name__}: student and teacher features cover different batches "
                f"({list(s.shape)} vs {list(t.shape)})"
            )
        return s.flatten(1), t.flatten(1)


# -- RKD --------------------------------------------------------------------------------------


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of `e` (`[batch, batch]`, zero diagonal)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth L1 between the distance matrices, each divided by its mean off-diagonal distance."""

    def normalised(e: Tensor) -> Tensor:
        d = pairwise_distances(e)
        pairs = max(len(e) * (len(e) - 1), 1)
        return d / (d.sum() / pairs).clamp_min(1e-12)

    return F.smooth_l1_loss(normalised(student), normalised(teacher))


def rkd_angles(e: Tensor) -> Tensor:
    """`[batch, batch, batch]`: entry (i, j, k) is the cosine of the angle at e_i between e_j and e_k
    (0 when j or k is i)."""
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # u[i, j] = unit(e_j - e_i)
    return u @ u.transpose(1, 2)


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth L1 between the triplet angle tensors."""
    return F.smooth_l1_loss(rkd_angles(student), rkd_angles(teacher))


class RKDLoss(RelationLoss):
    """Relational KD (Park et al., CVPR 2019): `distance_weight · L_D + angle_weight · L_A`.

    Follows the authors' code (github.com/lenscloth/RKD, `RkdDistance`, `RKdAngle`): smooth L1
    (β = 1) averaged over all `batch²` distance entries (diagonal included) and all `batch³`
    angle entries. The angle term holds `batch² · dim` differences and `batch³` cosines in memory,
    so keep batches small (the paper uses 128); `angle_weight=0` skips it.
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        teacher: str | None = None,
        weight: float = 1.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        max_samples: int | None = 64,
    ) -> None:
        super().__init__(student_layer, teacher_layer, teacher, weight, max_samples)
        self.distance_weight = number(distance_weight, "rkd: distance_weight", low=0)
        self.angle_weight = number(angle_weight, "rkd: angle_weight", low=0)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise DistillError("rkd: distance_weight and angle_weight are both 0, so the term would always be 0")

    def forward(self, view: StepView) -> Tensor:
        s, t = self.embeddings(view)
        loss = s.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * rkd_distance(s, t)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle(s, t)
        return loss


# -- SP ---------------------------------------------------------------------------------------


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """‖G_s − G_t‖²_F / batch², G = row-wise L2-normalised `f fᵀ` (Tung & Mori 2019, eq. 2–4)."""
    g_s = F.normalize(student @ student.t(), p=2, dim=1)
    g_t = F.normalize(teacher @ teacher.t(), p=2, dim=1)
    return (g_s - g_t).pow(2).sum() / len(student) ** 2


class SPLoss(RelationLoss):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019); the paper weighs it by γ = 3000."""

    def forward(self, view: StepView) -> Tensor:
        return sp_loss(*self.embeddings(view))


# -- PKT --------------------------------------------------------------------------------------


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """KL between the teacher's and the student's conditional probabilities of cosine similarity.

    As in the authors' code (github.com/passalis/probabilistic_kt, `cosine_similarity_loss`):
    rows are L2-normalised, cosines shifted to [0, 1] by (s + 1) / 2 and divided by their row
    sums (the diagonal included), and the KL terms p_t · log((p_t + eps) / (p_s + eps)) are
    averaged over all `batch²` entries.
    """

    def probabilities(e: Tensor) -> Tensor:
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        s = (e @ e.t() + 1) / 2
        return s / s.sum(1, keepdim=True)

    p_s, p_t = probabilities(student), probabilities(teacher)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKTLoss(RelationLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), cosine-similarity kernel."""

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        teacher: str | None = None,
        weight: float = 1.0,
        eps: float = 1e-7,
        max_samples: int | None = 512,
    ) -> None:
        super().__init__(student_layer, teacher_layer, teacher, weight, max_samples)
        self.eps = number(eps, "pkt: eps", low=0, low_open=True)

    def forward(self, view: StepView) -> Tensor:
        return pkt_loss(*self.embeddings(view), eps=self.eps)


# -- CC ---------------------------------------------------------------------------------------


def cc_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    """The `[batch, batch]` Gaussian-RBF correlation of L2-normalised rows, by its Taylor series.

    For unit vectors exp(−γ‖a − b‖²) = exp(−2γ) · exp(2γ a·b) ≈ Σ_{p=0..P} exp(−2γ) (2γ)^p / p! · (a·b)^p
    (Peng et al. 2019, eq. 9).
    """
    cos = F.normalize(e, p=2, dim=1) @ F.normalize(e, p=2, dim=1).t()
    terms = [math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos.pow(p) for p in range(order + 1)]
    return torch.stack(terms).sum(0)


class CCLoss(RelationLoss):
    """Correlation congruence (Peng et al., ICCV 2019): ‖C_s − C_t‖²_F / batch².

    C is the Taylor-approximated Gaussian RBF kernel matrix of `cc_correlation`. The expansion
    assumes unit-norm embeddings, so both sides are L2-normalised first (our reading of the paper;
    the Knowledge-Distillation-Zoo implementation does the same). Defaults γ = 0.4 and P = 2 are
    the paper's. Only the correlation term is implemented here: the paper's instance-level
    congruence is a separate term (e.g. `kd`).
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        teacher: str | None = None,
        weight: float = 1.0,
        gamma: float = 0.4,
        order: int = 2,
        max_samples: int | None = 512,
    ) -> None:
        super().__init__(student_layer, teacher_layer, teacher, weight, max_samples)
        self.gamma = number(gamma, "cc: gamma", low=0, low_open=True)
        self.order = integer(order, "cc: order (the Taylor order P)", minimum=1)

    def forward(self, view: StepView) -> Tensor:
        s, t = self.embeddings(view)
        c_s = cc_correlation(s, self.gamma, self.order)
        c_t = cc_correlation(t, self.gamma, self.order)
        return (c_s - c_t).pow(2).sum() / len(s) ** 2
