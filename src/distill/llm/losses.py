"""Token-level distillation losses for causal language models.

Every function takes student and teacher logits of shape [B, L, V] (or [N, V]) and labels of
shape [B, L] (or [N]) that are already aligned with the logits: position i of the logits
predicts labels[i] (the caller shifts them, as in a causal LM's loss). Labels equal to
`IGNORE_INDEX` (-100) mark positions to skip (prompt and padding); only their positions are
used, never their values, so a distillation loss works on sampled continuations too.

Each function returns the mean over the valid (label != -100) tokens of a per-token
divergence between the teacher's distribution p = softmax(t / T) and the student's
q = softmax(s / T) over the vocabulary. A batch without a valid token gives a zero that
keeps a grad_fn connected to the student logits.

Temperature: logits are divided by T, and **no T² factor** is applied (unlike the Hinton
`KDLoss` of `distill.losses.response`). This follows the usual practice for LLM token-level
distillation (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024; DistiLLM, Ko et al. 2024),
which train at T = 1, the default here.

Numerics: log-softmax runs in float32 (bf16/fp16 inputs are upcast; float64 stays float64);
probabilities that are exactly 0 (e.g. teacher logits of -inf on a masked part of the
vocabulary) contribute 0 · log 0 = 0, not NaN. Teacher logits are detached: the teacher is
frozen and receives no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.llm.teacher_cache import coarse_log_probs
from distill.losses.base import LossTerm, StepView
from distill.validate import number

IGNORE_INDEX = -100  # label of a position that no loss counts (prompt, padding)


# -- validation ---------------------------------------------------------------------------------


def _check_temperature(owner: str, value: object) -> float:
    return number(value, f"{owner}: temperature", low=0, low_open=True)


def _check_beta(owner: str, value: object) -> float:
    return number(value, f"{owner}: beta", low=0, high=1)


def _check_alpha(owner: str, value: object) -> float:
    return number(value, f"{owner}: alpha", low=0, high=1, high_open=True)


def _check_shapes(owner: str, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> None:
    if student_logits.ndim < 2:
        raise DistillError(f"{owner}: logits must have shape [..., vocab], got {list(student_logits.shape)}")
    if teacher_logits is not None:
        v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
        if v_s != v_t:
            raise DistillError(f"student and teacher vocabularies differ: {v_s} vs {v_t}")
        if student_logits.shape != teacher_logits.shape:
            raise DistillError(
                f"{owner}: student and teacher logits differ in shape: "
                f"{list(student_logits.shape)} vs {list(teacher_logits.shape)}"
            )
    if labels.shape != student_logits.shape[:-1]:
        raise DistillError(
            f"{owner}: labels must have the logits' shape without the vocabulary, "
            f"{list(student_logits.shape[:-1])}, got {list(labels.shape)}"
        )


# -- building blocks ----------------------------------------------------------------------------


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(z / T) over the last dim, in float32 at least."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)


def _prepare(
    owner: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    log_probs: bool = False,
) -> tuple[Tensor, Tensor]:
    """(log q_student, log p_teacher) at temperature T, after checking shapes; the teacher detached.

    `log_probs`: both inputs are log-probabilities at the wanted temperature already (T must be 1), read as
    they are (`TokenDivergence` on the teacher's kept tokens).
    """
    _check_shapes(owner, student_logits, teacher_logits, labels)
    temperature = _check_temperature(owner, temperature)
    if log_probs:
        if temperature != 1:
            raise DistillError(f"{owner}: log-probabilities are given at their temperature already (T must be 1)")
        return student_logits.float(), teacher_logits.detach().float()
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature).to(log_q.dtype)
    return log_q, log_p


def _kl_per_token(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) = Σ_v a (log a − log b) over the last dim, with 0 wherever a = 0.

    The difference is zeroed where a = 0 *before* the product, so that neither the value nor
    the gradient is NaN there (0 · (−inf) in the forward, 0 · inf in the backward).
    """
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(dim=-1)


def _log_mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w · a + (1 − w) · b) for 0 < w < 1, from log a and log b, stable in log space.

    Where both a and b are 0 the result is −inf with a zero gradient (torch's logaddexp alone
    gives a NaN gradient there).
    """
    x = log_a + math.log(w)
    y = log_b + math.log1p(-w)
    both_zero = (x == -math.inf) & (y == -math.inf)
    zero = torch.zeros_like(x)
    mixed = torch.logaddexp(torch.where(both_zero, zero, x), torch.where(both_zero, zero, y))
    return torch.where(both_zero, torch.full_like(mixed, -math.inf), mixed)


def _masked_mean(per_token: Tensor, labels: Tensor) -> Tensor:
    """Mean of `per_token` over positions whose label is not IGNORE_INDEX; 0 (with a grad_fn) if none is.

    Positions are selected with `where`, not boolean indexing (no host sync), so whatever the
    ignored positions hold never reaches the value.
    """
    valid = labels != IGNORE_INDEX
    total = torch.where(valid, per_token, torch.zeros_like(per_token)).sum()
    return total / valid.sum().clamp(min=1)


# -- the divergences ----------------------------------------------------------------------------


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0, log_probs: bool = False
) -> Tensor:
    """Forward KL(p_T ‖ q_S) = Σ_v p_t (log p_t − log q_s), mean over valid tokens; no T² factor.

    Mode-covering: the student is pushed to put mass wherever the teacher does. This is the
    token-level "supervised KD" objective (Sanh et al.; Kim & Rush's word-level KD).
    """
    log_q, log_p = _prepare("forward_kl", student_logits, teacher_logits, labels, temperature, log_probs)
    return _masked_mean(_kl_per_token(log_p, log_q), labels)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0, log_probs: bool = False
) -> Tensor:
    """Reverse KL(q_S ‖ p_T) = Σ_v q_s (log q_s − log p_t), mean over valid tokens; no T² factor.

    Mode-seeking (MiniLLM, Gu et al. 2024). It is +inf where the teacher gives probability 0
    (logit −inf) to a token the student does not exclude: mask the student's logits the same
    way when the teacher's vocabulary is masked.
    """
    log_q, log_p = _prepare("reverse_kl", student_logits, teacher_logits, labels, temperature, log_probs)
    return _masked_mean(_kl_per_token(log_q, log_p), labels)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    log_probs: bool = False,
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024), mean over valid tokens; no T² factor.

    With the mixture m = β · p_T + (1 − β) · q_S:
    JSD_β = β · KL(p_T ‖ m) + (1 − β) · KL(q_S ‖ m), computed in log space
    (log m = logsumexp(log β + log p_t, log(1 − β) + log q_s)). β = 0.5 is the symmetric JSD.

    The endpoints follow the GKD paper and TRL's `generalized_jsd_loss`: the formula above is
    identically 0 at β = 0 and β = 1, so these are defined separately as β = 0 → forward
    KL(p_T ‖ q_S) and β = 1 → reverse KL(q_S ‖ p_T), and return exactly `forward_kl` and
    `reverse_kl`. The function is therefore discontinuous at the ends: for β close to (but not
    at) 0 or 1 the value tends to 0, not to the KLs (JSD_β ≈ β · KL(p_T ‖ q_S) for small β,
    ≈ (1 − β) · KL(q_S ‖ p_T) for β near 1).
    """
    beta = _check_beta("generalized_jsd", beta)
    if beta == 0:
        return forward_kl(student_logits, teacher_logits, labels, temperature, log_probs)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, labels, temperature, log_probs)
    log_q, log_p = _prepare("generalized_jsd", student_logits, teacher_logits, labels, temperature, log_probs)
    log_m = _log_mix(log_p, log_q, beta)
    per_token = beta * _kl_per_token(log_p, log_m) + (1 - beta) * _kl_per_token(log_q, log_m)
    return _masked_mean(per_token, labels)


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.1,
    temperature: float = 1.0,
    log_probs: bool = False,
) -> Tensor:
    """DistiLLM's skew KL (Ko et al. 2024): KL(p_T ‖ α · p_T + (1 − α) · q_S), mean over valid tokens; no T².

    α in [0, 1); α = 0 is exactly `forward_kl`. Mixing some teacher mass into the student's
    side keeps the divergence finite and its gradient bounded when q_S is near 0. The mixture
    is computed in log space.
    """
    alpha = _check_alpha("skew_forward_kl", alpha)
    if alpha == 0:
        return forward_kl(student_logits, teacher_logits, labels, temperature, log_probs)
    log_q, log_p = _prepare("skew_forward_kl", student_logits, teacher_logits, labels, temperature, log_probs)
    return _masked_mean(_kl_per_token(log_p, _log_mix(log_p, log_q, alpha)), labels)


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.1,
    temperature: float = 1.0,
    log_probs: bool = False,
) -> Tensor:
    """DistiLLM's skew reverse KL (Ko et al. 2024): KL(q_S ‖ α · q_S + (1 − α) · p_T), mean over valid tokens; no T².

    α in [0, 1); α = 0 is exactly `reverse_kl`. With α > 0 the value stays finite even where
    the teacher's probability is 0. The mixture is computed in log space.
    """
    alpha = _check_alpha("skew_reverse_kl", alpha)
    if alpha == 0:
        return reverse_kl(student_logits, teacher_logits, labels, temperature, log_probs)
    log_q, log_p = _prepare("skew_reverse_kl", student_logits, teacher_logits, labels, temperature, log_probs)
    return _masked_mean(_kl_per_token(log_q, _log_mix(log_q, log_p, alpha)), labels)


def total_variation(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0, log_probs: bool = False
) -> Tensor:
    """Total variation distance 0.5 · Σ_v |p_t − q_s|, mean over valid tokens, in [0, 1]; no T² factor."""
    log_q, log_p = _prepare("total_variation", student_logits, teacher_logits, labels, temperature, log_probs)
    per_token = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    return _masked_mean(per_token, labels)


def lm_loss(student_logits: Tensor, labels: Tensor, log_probs: bool = False) -> Tensor:
    """Causal LM cross-entropy −log q_s(labels[i]) at T = 1, mean over valid tokens.

    Logits and labels must already be aligned (position i predicts labels[i]; shift before
    calling); IGNORE_INDEX (-100) positions are skipped. Computed in float32 at least. A batch
    without a valid token gives 0 with a grad_fn. `log_probs`: `student_logits` are log_softmax's
    output already (the step computed them once for several terms), read as they are.
    """
    _check_shapes("lm_loss", student_logits, None, labels)
    logits = student_logits.float() if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits
    loss = F.nll_loss if log_probs else F.cross_entropy
    total = loss(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


# -- loss terms ---------------------------------------------------------------------------------


class TokenDivergence(LossTerm):
    """A token-level divergence between the student's and the teacher's next-token distributions.

    Reads `view.student_logits` and `view.teacher_logits` ([B, L, V]) and takes the labels from
    `view.targets` ([B, L], already shifted to align with the logits, -100 where ignored). Logits
    are divided by `temperature`; no T² factor is applied (see the module docstring). Each
    divergence is its own subclass, chosen by `_target_` (configs/lm_distill/).
    """

    needs_teacher = True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = _check_temperature(type(self).__name__, temperature)

    #: the divergence function (`forward_kl`, ...), called with the term's `options()`; a subclass that sets it
    #: needs no `divergence` of its own
    loss: Callable[..., Tensor] | None = None
    #: whether the term may be given the teacher's kept tokens (`view.teacher_top_k`) as k + 1 log-probabilities
    #: (`distill.llm.teacher_cache.coarse_log_probs`): true for the terms built on `loss`; a subclass with its own
    #: `divergence` is given the dense [B, L, V] distribution instead
    reads_top_k = False

    def options(self) -> dict[str, float]:
        """The divergence's own parameters (β, α) passed to `loss`."""
        return {}

    def divergence(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        temperature: float | None = None,
        log_probs: bool = False,
    ) -> Tensor:
        """The divergence at `temperature` (None: the term's own); `log_probs`: both inputs are log-probabilities."""
        if self.loss is None:
            raise NotImplementedError
        t = self.temperature if temperature is None else temperature
        return type(self).loss(
            student_logits, teacher_logits, labels, temperature=t, log_probs=log_probs, **self.options()
        )

    def forward(self, view: StepView) -> Tensor:
        if view.teacher_top_k is not None:  # the teacher's kept tokens (distill.llm.teacher_cache)
            if not self.reads_top_k:
                raise DistillError(f"{type(self).__name__} reads the teacher's dense logits only (reads_top_k = False)")
            student, teacher = coarse_log_probs(
                view.student_logits, *view.teacher_top_k, self.temperature, view.student_log_probs
            )
            # both sides are log-probabilities at the term's temperature already
            return self.divergence(student, teacher, view.targets, temperature=1.0, log_probs=True)
        if view.teacher_logits is None:
            raise DistillError(f"{type(self).__name__} needs a teacher, and this run has none")
        return self.divergence(view.student_logits, view.teacher_logits, view.targets)


class ForwardKL(TokenDivergence):
    """KL(p_teacher || q_student) per token (`forward_kl`): mode-covering."""

    loss, reads_top_k = staticmethod(forward_kl), True


class ReverseKL(TokenDivergence):
    """KL(q_student || p_teacher) per token (`reverse_kl`): mode-seeking (MiniLLM's token-level objective)."""

    loss, reads_top_k = staticmethod(reverse_kl), True


class GeneralizedJSD(TokenDivergence):
    """The generalised Jensen-Shannon divergence with `beta` (`generalized_jsd`; GKD, Agarwal et al. 2024)."""

    loss, reads_top_k = staticmethod(generalized_jsd), True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, beta: float = 0.5) -> None:
        super().__init__(weight, temperature)
        self.beta = _check_beta(type(self).__name__, beta)

    def options(self) -> dict[str, float]:
        return {"beta": self.beta}


class SkewForwardKL(TokenDivergence):
    """Skew KL with `alpha` (`skew_forward_kl`; DistiLLM, Ko et al. 2024)."""

    loss, reads_top_k = staticmethod(skew_forward_kl), True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, alpha: float = 0.1) -> None:
        super().__init__(weight, temperature)
        self.alpha = _check_alpha(type(self).__name__, alpha)

    def options(self) -> dict[str, float]:
        return {"alpha": self.alpha}


class SkewReverseKL(SkewForwardKL):
    """Skew reverse KL with `alpha` (`skew_reverse_kl`; DistiLLM, Ko et al. 2024)."""

    loss = staticmethod(skew_reverse_kl)


class TotalVariation(TokenDivergence):
    """Total variation distance per token (`total_variation`)."""

    loss, reads_top_k = staticmethod(total_variation), True


class LMLoss(LossTerm):
    """The causal LM cross-entropy (`lm_loss`) of the student on `view.targets` as a loss term; no teacher."""

    needs_teacher = False

    def forward(self, view: StepView) -> Tensor:
        return lm_loss(view.student_logits, view.targets)
