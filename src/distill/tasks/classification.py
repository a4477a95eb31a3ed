"""Classification on the spine: vectors, sequences and images held in memory (or streamed from folders),
any `nn.Module` from `_target_` as teacher or student, the `distill` loss terms, and a report of
accuracy, calibration and agreement with the teachers.

Config (`distill-train`, configs/train.yaml): `data`, `teacher` (several), `student` (`net`, `fit`,
`baseline`), `distill`, `multi_teacher`, `born_again`, `cache_teacher_outputs`.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from distill.assembly import build, build_net
from distill.checkpoints import save_model
from distill.compress.base import StageContext
from distill.data.base import has_standardization
from distill.errors import DistillError
from distill.measure import classification_metrics, per_class_accuracy, predict
from distill.modules import DistillationModule, SupervisedModule
from distill.tasks.base import DataModule, ModelSpec, RunContext, StudentSpec, Task, check_contract, resolve_cut
from distill.validate import check_train_config

log = logging.getLogger(__name__)


@runtime_checkable
class ClassificationData(DataModule, Protocol):
    """What classification asks of its data besides the spine's loaders (see `distill.data.ArrayDataModule`)."""

    def distill_dataloader(self, batch_size: int | None = None) -> Any: ...
    def model_inputs(self, split: str, n: int) -> Tensor: ...


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Distilled minus baseline accuracy, and the share of the teacher–baseline gap it closes."""
    by_role = {r.get("role", r["model"]): r for r in rows}
    if "student" not in by_role or "baseline" not in by_role:
        return {}
    base, student = by_role["baseline"]["accuracy"], by_role["student"]["accuracy"]
    summary = {"student_minus_baseline": student - base}
    teachers = [r["accuracy"] for r in rows if r.get("role") == "teacher" or r["model"].startswith("teacher:")]
    if teachers:
        gap = max(teachers) - base
        summary["gap_closed"] = (student - base) / gap if gap > 0 else float("nan")
    return summary


class ClassificationTask(Task):
    """Teachers trained with cross-entropy (or loaded), the student distilled by the `distill` terms."""

    terms_group = "distill"
    monitor = ("val/acc", "max")
    cut_from = ""  # the teacher the student is cut from (`student.cut`)
    report_splits = ("test", "val")

    def check_config(self, cfg: DictConfig) -> None:
        self.cut_from = resolve_cut(cfg, "student", "teacher", "net")
        if self.cut_from and (cfg.get("born_again") or {}).get("generations"):
            raise DistillError("student.cut: born_again has no teacher to cut from; use another student")
        check_train_config(cfg)

    def data_config(self, cfg: DictConfig) -> DictConfig:
        return cfg.data

    def build_data(self, cfg: DictConfig) -> Any:
        """Instantiate and set up the data; write its class count and input shape into `cfg.data`."""
        dm = check_contract(build(cfg.data, "data"), ClassificationData, "data")
        dm.prepare_data()
        dm.setup("fit")
        with open_dict(cfg):
            cfg.data.num_classes = dm.num_classes
            cfg.data.input_shape = list(dm.input_shape)
        log.info("Data: %s", dm.describe())
        return dm

    def teachers(self, cfg: DictConfig) -> dict[str, ModelSpec]:
        specs = {}
        for name, node in (cfg.get("teacher") or {}).items():
            if not isinstance(node, DictConfig) or "net" not in node:
                raise DistillError(f"teacher.{name} is not a teacher config (it needs net, fit, ckpt_path)")
            specs[name] = ModelSpec(node.net, node.get("fit"), node.get("ckpt_path"))
        return specs

    def student(self, cfg: DictConfig) -> StudentSpec:
        cut = cfg.student.get("cut") or None
        return StudentSpec(cfg.student.net, cfg.student.fit, cfg.student.baseline, cut, self.cut_from)

    def build_model(self, node: DictConfig, what: str, seed: int, dm: Any, trains: bool) -> nn.Module:
        return build_net(node, what, seed, dm)

    def cut_student(self, cfg: DictConfig, node: DictConfig, teacher: nn.Module, dm: Any) -> tuple[nn.Module, dict]:
        """The teacher's network with channels removed (`distill.cut.ChannelCut`), importance from training batches."""
        cutter = build(node, "student.cut")
        if not callable(getattr(cutter, "cut", None)):
            raise DistillError(f"student.cut: {node.get('_target_')} has no cut(teacher, batches, example, ...) method")
        limit = getattr(cutter, "batches", 8)
        batches = [(b["x"], b["y"]) for b in itertools.islice(dm.train_dataloader(256), limit)]
        return cutter.cut(teacher, batches, self.example_input(dm), dm.num_classes, cfg.report.latency_repeats)

    def module(self, cfg, model, fit, dm, stage, teachers=None, terms=None):  # noqa: ANN001, ANN201 - see Task
        optimizer = build(fit.optimizer, f"{stage} optimizer")
        scheduler = build(fit.scheduler, f"{stage} scheduler") if fit.get("scheduler") else None
        clip = fit.get("gradient_clip_val")
        if terms is None:
            return SupervisedModule(model, optimizer, dm.num_classes, scheduler, stage, clip)
        multi = cfg.get("multi_teacher")
        return DistillationModule(
            model, teachers or {}, terms, optimizer=optimizer, scheduler=scheduler, num_classes=dm.num_classes,
            example_input=dm.model_inputs("train", 2), cache_teacher_outputs=cfg.get("cache_teacher_outputs", True),
            num_samples=dm.num_train + dm.num_transfer, prefix=stage, gradient_clip_val=clip,
            multi_teacher=build(multi, "multi_teacher") if isinstance(multi, DictConfig) else None,
        )  # fmt: skip

    def train_loader(self, dm: Any, fit: DictConfig, role: str) -> Any:
        if role == "student":  # labelled training set and the transfer set
            return dm.distill_dataloader(fit.get("batch_size"))
        return dm.train_dataloader(fit.get("batch_size"))

    def save_student(self, path: Path, student: nn.Module, cfg: DictConfig, dm: Any) -> None:
        save_model(
            path, student,
            net=OmegaConf.to_container(cfg.student.net, resolve=True),
            data=OmegaConf.to_container(cfg.data, resolve=True),
            num_classes=dm.num_classes,
            class_names=getattr(dm, "class_names", None),  # label i is class_names[i]
            input_transform="standardize" if has_standardization(student) else None,  # statistics: in the weights
            cut=bool(self.cut_from),  # the network's shapes are those of the weights (distill.cut.fit_shapes)
        )  # fmt: skip

    def stage_context(self, dm: Any, out_dir: Path, redistill: Any) -> StageContext:
        calibration = [batch["x"].cpu() for batch in itertools.islice(dm.train_dataloader(256), 16)]
        return StageContext(dm.model_inputs("val", 64), calibration, out_dir, dm.num_classes, redistill)

    def evaluate(
        self, models: dict[str, nn.Module | Path], dm: Any, teacher_names: list[str], split: str = "test"
    ) -> dict[str, dict]:
        """Test (or `split`) accuracy, calibration error (ECE), top-1 agreement with the teachers' mean logits, and the
        accuracy of each class (`per_class_accuracy`, with the worst class)."""
        from distill.compress import deploy

        loader = dm.test_dataloader if split == "test" else dm.val_dataloader

        def run(model: nn.Module | Path) -> tuple[Tensor, Tensor]:
            if isinstance(model, nn.Module):
                return predict(model, loader())
            return deploy.onnx_predict(model, loader())

        logits = {name: run(model) for name, model in models.items()}
        targets = next(iter(logits.values()))[1]
        names = [n for n in teacher_names if n in logits]
        reference = torch.stack([logits[n][0] for n in names]).mean(0) if names else None
        names = getattr(dm, "class_names", None)
        return {
            name: {**classification_metrics(z, targets, reference), **per_class_accuracy(z, targets, names)}
            for name, (z, _) in logits.items()
        }

    def example_input(self, dm: Any) -> Tensor:
        return dm.model_inputs("test", 1)

    def validation_figure(self, name: str, model: nn.Module | Path, row: dict[str, Any], dm: Any) -> dict[str, float]:
        return {"accuracy": self.evaluate({name: model}, dm, [], split="val")[name]["accuracy"]}

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        return summarize(rows)

    def report_extra(self, context: RunContext) -> dict[str, Any]:
        # The distilled student's validation accuracy: what a sweeper may optimise without seeing the test set.
        val_logits, val_targets = predict(context.models["student"], context.dm.val_dataloader())
        extra: dict[str, Any] = {"student_val_accuracy": classification_metrics(val_logits, val_targets)["accuracy"]}
        if getattr(context.dm, "class_names", None):
            extra["class_names"] = context.dm.class_names
        return extra
