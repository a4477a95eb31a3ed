"""What every loss term sees (`StepView`) and what it is (`LossTerm`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from distill.errors import DistillError


@dataclass(frozen=True)
class StepView:
    """A read-only view of one distillation step, handed to every loss term."""

    student_logits: Tensor
    # The teachers' combined prediction (the one teacher's logits when there is one; see
    # distill.losses.multi_teacher for several); None in a run without teachers.
    teacher_logits: Tensor | None
    teachers_logits: Mapping[str, Tensor]  # per teacher, by name
    student_features: Mapping[str, Tensor]  # by module path
    teacher_features: Mapping[str, Mapping[str, Tensor]]  # teacher name -> module path -> tensor
    targets: Tensor  # class labels; UNLABELLED (-1) for transfer-set samples
    index: Tensor | None  # row of each sample in the training set (None if the data gives none)
    epoch: int
    num_samples: int | None = None  # rows in the training set that `index` ranges over
    # Per-sample weights over the teachers ([batch, teachers], rows sum to 1, teachers in the
    # order of `teachers_logits`) set by a multi-teacher strategy; None means uniform.
    teacher_weights: Tensor | None = None
    # Which input positions are real (1) and which are padding (0), for sequence inputs ([batch, length],
    # unshifted); None for inputs without padding.
    attention_mask: Tensor | None = None
    # The teacher's next-token distributions as kept by distill.llm.teacher_cache, (values, token ids, log tail
    # mass) of its top k tokens per position, in place of `teacher_logits` (then None); read by the terms that
    # can use them (distill.llm.losses.TokenDivergence): each loss on the kept tokens and one bucket for the tail.
    teacher_top_k: tuple[Tensor, Tensor, Tensor] | None = None
    # log_softmax(student_logits) in float32, when the step computed it for several terms (the LM loss and the
    # terms reading `teacher_top_k`); None otherwise
    student_log_probs: Tensor | None = None


class LossTerm(nn.Module):
    """One weighted term of the distillation objective: `forward(view)` returns a scalar.

    Terms that need intermediate features list module paths in `student_layers` and
    `teacher_layers`; terms with parameters create them in `build`, once the feature shapes
    are known, and train with the student.
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    teacher: str | None = None  # whose `teacher_layers` are tapped; the first teacher when None
    needs_teacher: bool = True  # False for self-distillation terms that run without a teacher

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(weight) or weight < 0:
            raise DistillError(f"{type(self).__name__}: weight must be a finite number >= 0, got {weight}")
        self.weight = float(weight)

    def feature_pair(self, view: StepView, i: int = 0) -> tuple[Tensor, Tensor]:
        """The `i`-th (student layer, teacher layer) feature pair of this term in `view`."""
        name = self.teacher or next(iter(view.teacher_features))
        if name not in view.teacher_features:
            raise DistillError(
                f"{type(self).__name__}: no teacher named '{name}'; teachers: {', '.join(view.teacher_features)}"
            )
        return view.student_features[self.student_layers[i]], view.teacher_features[name][self.teacher_layers[i]]

    def build(self, view: StepView) -> None:
        """Create parameters that depend on feature shapes; `view` comes from a probe batch."""

    def forward(self, view: StepView) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
