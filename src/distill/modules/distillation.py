"""Distillation of one student from one or several frozen teachers by a dict of weighted loss terms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.losses.multi_teacher import MeanLogits, TeacherCombination
from distill.modules.base import ClassifierModule, OptimizerFactory, SchedulerFactory
from distill.taps import FeatureTaps


class DistillationModule(ClassifierModule):
    """Trains `net` (the student) on `sum(weight * term(view))` over the configured terms.

    Teachers are frozen and kept out of the registered children (`TeacherStudentModule`). When the
    training inputs carry no randomness, each teacher's outputs are computed once per run and
    looked up by sample index afterwards.

    With several teachers, `multi_teacher` (a `distill.losses.multi_teacher.TeacherCombination`)
    says how they combine: the mean of their logits, each term against every teacher averaged, or
    per-sample weights over the teachers. A run may have no teacher at all when every term is
    self-contained (`needs_teacher = False`).
    """

    def __init__(
        self,
        net: nn.Module,
        teachers: Mapping[str, nn.Module],
        terms: Mapping[str, LossTerm],
        optimizer: OptimizerFactory,
        num_classes: int,
        example_input: Tensor,
        scheduler: SchedulerFactory | None = None,
        cache_teacher_outputs: bool = True,
        cache_limit_bytes: int = 2**30,
        num_samples: int | None = None,
        multi_teacher: TeacherCombination | None = None,
        prefix: str = "student",
        gradient_clip_val: float | None = None,
    ) -> None:
        super().__init__(net, optimizer, num_classes, scheduler, prefix, gradient_clip_val, teachers)
        if not terms:
            raise DistillError("distillation needs at least one loss term (distill=[...])")
        needy = [name for name, term in terms.items() if term.needs_teacher]
        if not teachers and needy:
            raise DistillError(
                f"distillation needs at least one teacher for the terms {', '.join(needy)} (teacher=NAME)"
            )
        if multi_teacher is not None and not isinstance(multi_teacher, TeacherCombination):
            raise DistillError(
                f"multi_teacher must be a distill.losses.multi_teacher.TeacherCombination, got {type(multi_teacher).__name__}"
            )
        self.multi_teacher = multi_teacher or MeanLogits()
        self.terms = nn.ModuleDict(terms)
        self.cache_teacher_outputs, self.cache_limit_bytes = cache_teacher_outputs, cache_limit_bytes
        self._cache: dict[str, dict[str, Tensor]] | None = None
        self._val_teacher: Tensor | None = None  # the teachers' combined logits on the validation set
        self.num_samples = num_samples
        self.val_agreement = MulticlassAccuracy(num_classes=num_classes, average="micro")

        first = next(iter(self.teachers), None)
        student_paths = [p for term in terms.values() for p in term.student_layers]
        teacher_paths: dict[str, list[str]] = {name: [] for name in self.teachers}
        for term in terms.values():
            owner = term.teacher or first
            if not term.teacher_layers and owner is None:
                continue
            if owner not in self.teachers:
                raise DistillError(f"a loss term names teacher '{owner}'; teachers: {', '.join(self.teachers)}")
            teacher_paths[owner] += term.teacher_layers
        self.student_taps = FeatureTaps(net, student_paths, owner="student")
        self.teacher_taps = {
            n: FeatureTaps(t, teacher_paths[n], owner=f"teacher '{n}'") for n, t in self.teachers.items()
        }
        self._probe(example_input, num_classes)

    # -- cached teacher outputs follow the module across devices ------------------------------
    def _apply(self, fn: Callable, *args, **kwargs) -> DistillationModule:  # noqa: ANN002, ANN003
        super()._apply(fn, *args, **kwargs)
        if self._cache is not None:
            self._cache = {n: {k: fn(v) for k, v in d.items()} for n, d in self._cache.items()}
        if self._val_teacher is not None:
            self._val_teacher = fn(self._val_teacher)
        return self

    # -- one step --------------------------------------------------------------------------
    @torch.no_grad()
    def _run_teachers(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        outputs = {}
        for name, teacher in self.teachers.items():
            logits = teacher(x)
            outputs[name] = {"logits": logits, **self.teacher_taps[name].outputs}
        return outputs

    def _view(
        self, batch: dict[str, Tensor], student_logits: Tensor, teacher_out: dict[str, dict[str, Tensor]]
    ) -> StepView:
        logits = {n: out["logits"] for n, out in teacher_out.items()}
        weights, target = None, None
        if logits:
            target, weights = self.multi_teacher.combine(list(logits.values()), batch["y"])
        return StepView(
            student_logits=student_logits,
            teacher_logits=target,
            teachers_logits=logits,
            teacher_weights=weights,
            student_features=dict(self.student_taps.outputs),
            teacher_features={n: {k: v for k, v in out.items() if k != "logits"} for n, out in teacher_out.items()},
            targets=batch["y"],
            index=batch.get("index"),
            epoch=self.current_epoch,
            num_samples=self.num_samples,
            attention_mask=batch.get("attention_mask"),  # sequence inputs: which positions are padding
        )

    def _probe(self, x: Tensor, num_classes: int) -> None:
        """One forward on example inputs: checks class counts, then lets terms build their parameters."""
        x = x[:2]
        self.net.eval()
        with torch.no_grad():
            student_logits = self.net(x)
            teacher_out = self._run_teachers(x)
        self.net.train()
        counts = {f"teacher '{n}'": out["logits"].shape[-1] for n, out in teacher_out.items()}
        counts["student"] = student_logits.shape[-1]
        if any(c != num_classes for c in counts.values()):
            found = ", ".join(f"{who} predicts {c}" for who, c in counts.items())
            raise DistillError(f"teacher and student must predict the data's {num_classes} classes: {found}")
        batch = {"y": torch.zeros(len(x), dtype=torch.long), "index": torch.arange(len(x))}
        view = self._view(batch, student_logits, teacher_out)
        for term in self.terms.values():
            term.build(view)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        student_logits = self.net(batch["x"])
        if self._cache is not None and "index" in batch:
            index = batch["index"]
            teacher_out = {n: {k: v.index_select(0, index) for k, v in d.items()} for n, d in self._cache.items()}
        else:
            teacher_out = self._run_teachers(batch["x"])
        view = self._view(batch, student_logits, teacher_out)
        values = {name: self._term_value(term, view) for name, term in self.terms.items()}
        weighted = [self.terms[name].weight * value for name, value in values.items()]
        total = sum(weighted[1:], weighted[0])  # no 0 + first term: one operation less per step
        values["loss"] = total
        self.optimize(total)
        self.accumulate(values)
        return total

    def _term_value(self, term: LossTerm, view: StepView) -> Tensor:
        """The term on `view`; under `mean_losses`, averaged over one view per teacher."""
        if not self.multi_teacher.per_teacher_losses or len(view.teachers_logits) < 2 or term.teacher_layers:
            return term(view)
        per_teacher = [
            term(dataclasses.replace(view, teacher_logits=z, teachers_logits={n: z}, teacher_weights=None))
            for n, z in view.teachers_logits.items()
        ]
        return torch.stack(per_teacher).mean()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["x"])
        self.val_acc(logits, batch["y"])
        self.log(f"{self.prefix}/val/acc", self.val_acc, prog_bar=True)
        if self.teachers:
            if self._val_teacher is not None and "index" in batch:
                teacher = self._val_teacher.index_select(0, batch["index"])
            else:
                teacher = self._view(batch, logits, self._run_teachers(batch["x"])).teacher_logits
            self.val_agreement(logits, teacher.argmax(-1))
            self.log(f"{self.prefix}/val/agreement", self.val_agreement)

    # -- teacher outputs computed once -----------------------------------------------------
    def on_validation_start(self) -> None:
        """The teachers' validation predictions never change: compute them at the first validation."""
        loader = self.trainer.val_dataloaders
        if not self.teachers or self._val_teacher is not None or not getattr(loader, "deterministic", False):
            return
        convert = self.trainer.precision_plugin.convert_input
        chunks = []
        for start in range(0, len(loader.x), 4096):
            x = convert(loader.inputs(start, start + 4096).to(self.device))
            y = loader.y[start : start + 4096].to(self.device)
            chunks.append(self._view({"y": y}, x, self._run_teachers(x)).teacher_logits)
        self._val_teacher = torch.cat(chunks)

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if not self.cache_teacher_outputs or not getattr(loader, "deterministic", False):
            self._cache = None
            return
        x = loader.x
        if not self.teachers:
            return
        convert = self.trainer.precision_plugin.convert_input  # e.g. bf16 inputs under bf16-true
        probe = self._run_teachers(convert(loader.inputs(0, 1).to(self.device)))
        row_bytes = sum(v.numel() * v.element_size() for out in probe.values() for v in out.values())
        if row_bytes * len(x) > self.cache_limit_bytes:
            self._cache = None
            return
        chunks: dict[str, dict[str, list[Tensor]]] = {n: {k: [] for k in out} for n, out in probe.items()}
        for start in range(0, len(x), 4096):
            for n, out in self._run_teachers(convert(loader.inputs(start, start + 4096).to(self.device))).items():
                for k, v in out.items():
                    chunks[n][k].append(v)
        self._cache = {n: {k: torch.cat(v) for k, v in d.items()} for n, d in chunks.items()}

    def on_train_end(self) -> None:
        self._cache = self._val_teacher = None
