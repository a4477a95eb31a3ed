"""Small objects the unit tests build again and again: a loss term's StepView, CRD's hand-made views,
a quiet CPU Trainer, random English-like text, and softmax and KL written out by hand.

(Configs and command-line jobs: tests/conftest.py; file writers: tests/formats.py; callbacks that
command-line runs load: tests/helpers.py.)
"""

from __future__ import annotations

import math
import random

import lightning as L
import torch
from torch import Tensor

from distill.losses.base import StepView
from distill.losses.contrastive import CRDLoss

_COPY = object()  # the default teacher logits: a detached copy of the student's
_ARANGE = object()  # the default index: 0..n-1


def step_view(
    student_logits: Tensor,
    teacher_logits: Tensor | None = _COPY,  # type: ignore[assignment]
    *,
    targets: Tensor | None = None,
    teachers: dict[str, Tensor] | None = None,
    student_features: dict[str, Tensor] | None = None,
    teacher_features: dict[str, dict[str, Tensor]] | None = None,
    index: Tensor | None = _ARANGE,  # type: ignore[assignment]
    epoch: int = 0,
    **fields,
) -> StepView:
    """What a loss term sees in one step, for `n = len(student_logits)` samples.

    Left out: the teacher predicts what the student does (a detached copy; None: no teacher), `teachers`
    is {"teacher": teacher logits}, each teacher has no features, the targets are class 0, the index is
    0..n-1. `fields` sets StepView's other fields (teacher_weights, num_samples, attention_mask).
    """
    n = len(student_logits)
    if teacher_logits is _COPY:
        teacher_logits = student_logits.detach().clone()
    if teachers is None:
        teachers = {} if teacher_logits is None else {"teacher": teacher_logits}
    return StepView(
        student_logits=student_logits,
        teacher_logits=teacher_logits,
        teachers_logits=teachers,
        student_features=student_features or {},
        teacher_features={name: {} for name in teachers} if teacher_features is None else teacher_features,
        targets=torch.zeros(n, dtype=torch.long) if targets is None else targets,
        index=torch.arange(n) if index is _ARANGE else index,
        epoch=epoch,
        **fields,
    )


# -- CRD ----------------------------------------------------------------------------------------

CRD_SAMPLES = 50  # training-set size of the hand-made CRD views


def crd_view(
    batch: int = 4,
    d_s: int = 6,
    t_shape: tuple[int, ...] = (3, 5),
    index: Tensor | None = None,
    num_samples: int | None = CRD_SAMPLES,
    seed: int = 0,
) -> StepView:
    """A CRD step: random student features 's' [batch, d_s] (requiring grad), teacher 'cnn' features 't'
    [batch, *t_shape], samples 3, 7, 11, 42 of `num_samples` unless `index` says otherwise."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, d_s, generator=g, requires_grad=True)
    t = torch.randn(batch, *t_shape, generator=g)
    return step_view(
        torch.zeros(batch, 10),
        torch.zeros(batch, 10),
        teachers={"cnn": torch.zeros(batch, 10)},
        student_features={"s": s},
        teacher_features={"cnn": {"t": t}},
        index=torch.tensor([3, 7, 11, 42][:batch]) if index is None else index,
        num_samples=num_samples,
    )


def built_crd(view: StepView | None = None, **kwargs) -> CRDLoss:
    """A CRD term between 's' and 't' (8-D embeddings, 5 negatives unless `kwargs` say otherwise), built on `view`."""
    torch.manual_seed(0)
    term = CRDLoss("s", "t", **{"embed_dim": 8, "num_negatives": 5, **kwargs})
    term.build(view or crd_view())
    return term


# -- training and data --------------------------------------------------------------------------


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary; `kwargs` override."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


WORDS = "the a teacher student model learns token from each distills small large data loss softly".split()


def sentences(seed: int, chars: int) -> str:
    """At least `chars` characters of random sentences over WORDS, one a line."""
    rng = random.Random(seed)
    lines = []
    while sum(map(len, lines)) < chars:
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + ".\n")
    return "".join(lines)


# -- hand arithmetic, no torch ------------------------------------------------------------------


def softmax_by_hand(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(z / temperature) for z in row]  # exp(-inf) = 0.0
    total = sum(exps)
    return [e / total for e in exps]


def kl_by_hand(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ p_i (log p_i − log q_i), with 0 · log 0 = 0."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)
