"""Response-based terms: losses on the output logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.base import UNLABELLED
from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.validate import boolean, number


class HardLabelLoss(LossTerm):
    """Cross-entropy to the ground-truth labels, averaged over the labelled samples of the batch."""

    needs_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, view: StepView) -> Tensor:
        # A sum over labelled rows divided by their count (not reduction="mean", which is NaN for
        # a batch drawn only from the transfer set); no boolean indexing, no host sync.
        total = F.cross_entropy(
            view.student_logits,
            view.targets,
            ignore_index=UNLABELLED,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        return total / (view.targets != UNLABELLED).sum().clamp(min=1)


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score of each sample's logits over the classes: (z - mean(z)) / (std(z) + eps).

    Logit standardisation, Sun et al. 2024 (CVPR, "Logit Standardization in Knowledge
    Distillation"). As in the reference code, std is the sample standard deviation (n - 1 in
    the denominator) and `eps` is added to it, so a row of equal logits becomes all zeros.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def soft_log_probs(logits: Tensor, temperature: float, standardized: bool = False) -> Tensor:
    """log softmax(z / T), with z standardised first when `standardized` (T is then the base temperature)."""
    if standardized:
        logits = standardize(logits)
    return F.log_softmax(logits / temperature, dim=-1)


def teacher_log_probs(view: StepView, temperature: float, standardized: bool = False) -> Tensor:
    """log p_t: the teachers' target distribution at temperature T, [batch, classes].

    Without per-sample teacher weights it is log softmax(view.teacher_logits / T). With
    `view.teacher_weights` ([batch, K], teachers in the order of `view.teachers_logits`) it is
    the log of the weighted mixture Σ_k w_k softmax(z_k / T) of the teachers' softened
    distributions: a KL to that mixture equals Σ_k w_k KL(p_k ‖ p_s) up to a term that does
    not depend on the student. With `standardized`, every teacher's logits are standardised
    before the temperature is applied.
    """
    weights = view.teacher_weights
    if weights is None:
        return soft_log_probs(view.teacher_logits, temperature, standardized)
    logits = list(view.teachers_logits.values())
    if weights.ndim != 2 or weights.shape[1] != len(logits) or weights.shape[0] != logits[0].shape[0]:
        raise DistillError(
            f"teacher_weights must have shape [batch, {len(logits)} teachers] "
            f"(batch {logits[0].shape[0]}), got {list(weights.shape)}"
        )
    log_probs = torch.stack([soft_log_probs(z, temperature, standardized) for z in logits], dim=1)  # [B, K, C]
    # log w_k, with exactly -inf (not log of a clamp) for a teacher of weight 0, so one-hot
    # weights give that teacher's distribution exactly; the clamp keeps log's gradient finite.
    log_w = torch.where(weights > 0, weights.clamp_min(torch.finfo(weights.dtype).tiny).log(), -math.inf)
    return torch.logsumexp(log_probs + log_w.unsqueeze(-1).to(log_probs.dtype), dim=1)


def _kl(log_p_student: Tensor, log_p_teacher: Tensor) -> Tensor:
    """KL(p_teacher ‖ p_student) summed over the last dim and averaged over the batch, from log-probabilities."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of T, so the weight balancing it
    against the hard loss need not change when T does.
    """
    return (
        _kl(soft_log_probs(student_logits, temperature), soft_log_probs(teacher_logits, temperature)) * temperature**2
    )


class KDLoss(LossTerm):
    """Hinton knowledge distillation on softened logits (Hinton et al. 2015), with T² scaling.

    `standardize=True` z-scores student and teacher logits per sample before dividing by T
    (Sun et al. 2024); T then acts as the paper's base temperature and the T² factor stays.
    With per-sample teacher weights in the view (a multi-teacher strategy), the target is the
    weighted mixture of the teachers' softened distributions (see `teacher_log_probs`).
    """

    def __init__(self, weight: float = 1.0, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__(weight)
        self.temperature = number(temperature, "KD temperature", low=0, low_open=True)
        self.standardize = boolean(standardize, "KD standardize")

    def forward(self, view: StepView) -> Tensor:
        t = self.temperature
        log_p_student = soft_log_probs(view.student_logits, t, self.standardize)
        return _kl(log_p_student, teacher_log_probs(view, t, self.standardize)) * t**2


def dkd_parts(log_p_student: Tensor, log_p_teacher: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD) of Decoupled KD (Zhao et al. 2022), each a KL averaged over the batch, without T².

    Inputs are log-probabilities at temperature T ([batch, classes]) and the target class of
    each row. TCKD is the KL between the binary distributions [p_target, 1 - p_target] of
    teacher and student; NCKD the KL between their distributions over the non-target classes,
    renormalised. Both come from log-probabilities: 1 - p_target as a logsumexp over the other
    classes, and the non-target distribution as a log_softmax with the target masked to -inf
    (exact, where the reference subtracts 1000 from the target logit).
    """
    is_target = F.one_hot(target, log_p_student.shape[-1]).bool()

    def binary(log_p: Tensor) -> Tensor:
        log_target = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        log_rest = log_p.masked_fill(is_target, -math.inf).logsumexp(dim=-1)
        return torch.stack([log_target, log_rest], dim=-1)

    def non_target(log_p: Tensor) -> Tensor:
        # log of the renormalised non-target distribution; the target entry set to 0 (not -inf)
        # so that it adds exp(0)·(0 - 0) = 0 to the KL instead of NaN.
        return log_p.masked_fill(is_target, -math.inf).log_softmax(dim=-1).masked_fill(is_target, 0.0)

    tckd = _kl(binary(log_p_student), binary(log_p_teacher))
    nckd = _kl(non_target(log_p_student), non_target(log_p_teacher))
    return tckd, nckd


class DKDLoss(LossTerm):
    """Decoupled KD (Zhao et al. 2022, CVPR): (alpha · TCKD + beta · NCKD) · T², with a linear warm-up.

    The target class of a row is its label; rows without one (UNLABELLED, the transfer set)
    use the class the teacher's target distribution ranks first (its argmax). The warm-up
    factor is min(epoch / warmup_epochs, 1) on `view.epoch`, as in the reference code; the
    epochs here count from 0, so the first epoch trains with factor 0 (no DKD), and the full
    weight is reached at epoch `warmup_epochs`. `warmup_epochs=0` disables the warm-up.
    `standardize` z-scores the logits first, as for KDLoss (Sun et al. 2024).
    """

    def __init__(
        self,
        weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20,
        standardize: bool = False,
    ) -> None:
        super().__init__(weight)
        self.alpha = number(alpha, "DKD alpha", low=0)
        self.beta = number(beta, "DKD beta", low=0)
        self.temperature = number(temperature, "DKD temperature", low=0, low_open=True)
        self.warmup_epochs = number(warmup_epochs, "DKD warmup_epochs", low=0)
        self.standardize = boolean(standardize, "DKD standardize")

    @staticmethod
    def _check_classes(num_classes: int) -> None:
        if num_classes < 3:
            raise DistillError(
                f"DKD needs at least 3 classes, got {num_classes}: NCKD over a single non-target class is always zero"
            )

    def build(self, view: StepView) -> None:
        self._check_classes(view.student_logits.shape[-1])

    def warmup_factor(self, epoch: int) -> float:
        return min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0

    def forward(self, view: StepView) -> Tensor:
        self._check_classes(view.student_logits.shape[-1])
        t = self.temperature
        log_p_student = soft_log_probs(view.student_logits, t, self.standardize)
        log_p_teacher = teacher_log_probs(view, t, self.standardize)
        target = torch.where(view.targets == UNLABELLED, log_p_teacher.argmax(dim=-1), view.targets)
        tckd, nckd = dkd_parts(log_p_student, log_p_teacher, target)
        return (self.alpha * tckd + self.beta * nckd) * t**2 * self.warmup_factor(view.epoch)


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`; eps joins the denominator."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


class DISTLoss(LossTerm):
    """DIST (Huang et al. 2022, NeurIPS, "Knowledge Distillation from A Stronger Teacher").

    With p = softmax(z / T) ([batch, classes]): inter-class loss = 1 - mean over samples of the
    Pearson correlation of p_s[i, :] and p_t[i, :]; intra-class loss = 1 - mean over classes of
    the correlation of p_s[:, c] and p_t[:, c]; loss = T² · (beta · inter + gamma · intra).
    Correlation ignores scale and shift, so the student need only match the teacher's
    relations, not its exact probabilities. With a batch of one, the intra-class term is a
    constant 1 (a single value has no correlation). Per-sample teacher weights in the view
    give the mixture target, as for KDLoss.
    """

    def __init__(self, weight: float = 1.0, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__(weight)
        self.beta = number(beta, "DIST beta", low=0)
        self.gamma = number(gamma, "DIST gamma", low=0)
        self.temperature = number(temperature, "DIST temperature", low=0, low_open=True)

    def forward(self, view: StepView) -> Tensor:
        t = self.temperature
        p_student = soft_log_probs(view.student_logits, t).exp()
        p_teacher = teacher_log_probs(view, t).exp()
        inter = 1 - pearson(p_student, p_teacher).mean()
        intra = 1 - pearson(p_student.T, p_teacher.T).mean()
        return t**2 * (self.beta * inter + self.gamma * intra)
