"""How several teachers become one target, chosen by `_target_` (the `multi_teacher` config group).

A strategy is a `TeacherCombination`: `combine(logits, targets)` gives the teachers' combined logits
and, for weighting strategies, `[batch, teachers]` weights whose rows sum to 1. KD-type terms then
distil towards the weighted mixture of the teachers' softened distributions, which equals the
weighted sum of the per-teacher KL losses up to a constant that does not depend on the student.
With `per_teacher_losses`, each logit-based term is computed against every teacher and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.base import UNLABELLED


def entropy_weights(logits: list[Tensor]) -> Tensor:
    """Softmax over teachers of minus each teacher's prediction entropy: confident teachers count more.

    Entropy-based teacher weighting, as in Kwon et al. 2020 (ICASSP, adaptive KD by entropy).
    """
    entropies = torch.stack([-(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1) for z in logits], dim=1)
    return F.softmax(-entropies, dim=1)


def confidence_weights(logits: list[Tensor], targets: Tensor) -> Tensor:
    """CA-MKD (Zhang et al. 2022, ICASSP): w_k = (1 - softmax_k(CE_k)) / (K - 1).

    CE_k is teacher k's cross-entropy to the label of each sample: the teachers that predict
    the label better weigh more. Samples without a label (the transfer set) get equal weights.
    """
    k = len(logits)
    if k == 1:
        return torch.ones(targets.shape[0], 1, device=targets.device)
    labelled = targets != UNLABELLED
    safe = targets.clamp(min=0)
    ce = torch.stack([F.cross_entropy(z, safe, reduction="none") for z in logits], dim=1)
    weights = (1 - F.softmax(ce, dim=1)) / (k - 1)
    uniform = torch.full_like(weights, 1.0 / k)
    return torch.where(labelled.unsqueeze(1), weights, uniform)


def mixture_logits(logits: list[Tensor], weights: Tensor) -> Tensor:
    """log Σ_k w_k softmax(z_k): the weighted mixture of the teachers' distributions, as logits."""
    log_probs = torch.stack([F.log_softmax(z, -1) for z in logits], dim=1)  # [B, K, C]
    return torch.logsumexp(log_probs + weights.clamp_min(1e-12).log().unsqueeze(-1), dim=1)


class TeacherCombination:
    """The mean of the teachers' logits (`multi_teacher=mean_logits`, the default)."""

    #: compute each logit-based term against every teacher and average the terms, instead of one combined target
    per_teacher_losses = False

    def weights(self, logits: list[Tensor], targets: Tensor) -> Tensor | None:
        """Per-sample weights over the teachers, or None for a plain mean of the logits."""
        return None

    def combine(self, logits: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """The teachers' combined logits and the weights behind them (None: uniform)."""
        if len(logits) == 1:
            return logits[0], None
        weights = self.weights(logits, targets)
        if weights is None:
            return torch.stack(logits).mean(0), None
        return mixture_logits(logits, weights), weights


class MeanLogits(TeacherCombination):
    """KD-type terms see the mean of the teachers' logits."""


class MeanLosses(TeacherCombination):
    """Each logit-based term against every teacher, averaged (the combined target serves agreement only)."""

    per_teacher_losses = True


class EntropyWeighted(TeacherCombination):
    """Per-sample weights favouring confident teachers (`entropy_weights`)."""

    def weights(self, logits: list[Tensor], targets: Tensor) -> Tensor | None:
        return entropy_weights(logits)


class ConfidenceWeighted(TeacherCombination):
    """CA-MKD: per-sample weights from each teacher's cross-entropy to the label (`confidence_weights`)."""

    def weights(self, logits: list[Tensor], targets: Tensor) -> Tensor | None:
        return confidence_weights(logits, targets)
