"""How several teachers become one target: per-sample weights over the teachers.

A strategy gives `[batch, teachers]` weights whose rows sum to 1. KD-type terms then distil
towards the weighted mixture of the teachers' softened distributions, which equals the
weighted sum of the per-teacher KL losses up to a constant that does not depend on the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.base import UNLABELLED
from distill.errors import DistillError

STRATEGIES = ("mean_logits", "mean_losses", "entropy_weighted", "ca_mkd")


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise DistillError(f"unknown multi-teacher strategy '{strategy}'; valid strategies: {', '.join(STRATEGIES)}")
    return strategy


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
