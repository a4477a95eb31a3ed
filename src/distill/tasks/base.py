"""What a task is, and the contracts of what it hands to the spine.

The spine (`distill.spine.run`) runs the same job for every task: config checks → data → teachers
(loaded, used as they are, or trained once and cached) → the student trained alone (the baseline,
cached) → the student distilled → compression stages → every model measured the same way → the
report. A `Task` is what varies: its data module, how its models are built and called, its
LightningModules (its per-step view), its metrics and its report. A task is chosen by `_target_`
(the `task` config group), so a new task family is a task file and its configs.

Objects built from the user's configs are checked against the contracts below where they are built
(`check_contract`), so a data module or a compression stage missing a member fails in one line
naming it, before anything trains.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
from omegaconf import DictConfig
from torch import Tensor, nn

from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError


@runtime_checkable
class DataModule(Protocol):
    """What the spine asks of every task's data: set up once, then loaders for each split."""

    def setup(self, stage: str | None = None) -> None: ...
    def train_dataloader(self, *args: Any, **kwargs: Any) -> Any: ...
    def val_dataloader(self) -> Any: ...
    def test_dataloader(self) -> Any: ...


@runtime_checkable
class Batches(Protocol):
    """A loader: iterable of batches with a length (`set_epoch(epoch)` is used when present)."""

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


@runtime_checkable
class CompressionStage(Protocol):
    """A stage after distillation: `apply(model, ctx)` gives the compressed model or an artifact."""

    def apply(self, model: nn.Module | Path, ctx: StageContext) -> StageResult: ...


def protocol_members(protocol: type) -> list[str]:
    """The methods a Protocol (or abstract base) declares, in definition order."""
    names = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol, ABC) or klass.__module__ == "typing":
            continue
        names += [n for n, v in vars(klass).items() if inspect.isfunction(v) and not n.startswith("_")]
        names += [n for n in ("__iter__", "__len__") if n in vars(klass)]
    return list(dict.fromkeys(names))


def check_contract(obj: Any, protocol: type, what: str) -> Any:
    """`obj`, after checking it has every method `protocol` declares; else one line naming the first missing."""
    for name in protocol_members(protocol):
        if not callable(getattr(obj, name, None)):
            members = ", ".join(protocol_members(protocol))
            raise DistillError(
                f"{what}: {type(obj).__module__}.{type(obj).__name__} has no method '{name}' "
                f"(a {protocol.__name__} needs {members})"
            )
    return obj


@dataclass
class ModelSpec:
    """How to get one model: its config node, its training recipe (None: used as it is), a checkpoint."""

    model: DictConfig
    fit: DictConfig | None = None
    ckpt_path: str | None = None
    source: str = ""  # what the report says of a model used as it is (e.g. "pretrained <folder>")

    @property
    def trains(self) -> bool:
        return self.fit is not None and not self.ckpt_path


@dataclass
class StudentSpec:
    """The student's config node, its distillation recipe and its baseline's (trained on the data alone; None:
    no baseline)."""

    model: DictConfig
    fit: DictConfig
    baseline: DictConfig | None
    cut: DictConfig | None = None  # the student is this teacher's network, cut (`student=pruned`)
    cut_from: str = ""  # the teacher it is cut from


def resolve_cut(cfg: DictConfig, student_key: str, teacher_group: str, net_key: str) -> str:
    """With `<student_key>.cut` set, the student's network (`<student_key>.<net_key>`) becomes the config of
    the teacher it is cut from (`cut.teacher`, else the first); returns that teacher's name ("" without a cut)."""
    from omegaconf import open_dict

    node = cfg.get(student_key)
    cut = node.get("cut") if isinstance(node, DictConfig) else None
    if not cut:
        return ""
    group = cfg.get(teacher_group) or {}
    teachers = {group.name: group} if net_key in group else dict(group)  # one teacher (lm_teacher) or several
    if not teachers:
        raise DistillError(f"{student_key}.cut: there is no teacher to cut the student from ({teacher_group} is empty)")
    name = cut.get("teacher") or next(iter(teachers))
    if name not in teachers:
        raise DistillError(f"{student_key}.cut.teacher: no teacher named '{name}' (teachers: {', '.join(teachers)})")
    with open_dict(cfg):
        node[net_key] = copy.deepcopy(teachers[name][net_key])
    return str(name)


class Task(ABC):
    """One task family on the spine. Subclasses set the attributes and implement the methods below."""

    #: config group of the task's loss terms (`distill`, `lm_distill`, ...)
    terms_group: str = "distill"
    #: the validation metric every stage logs as `<stage>/<name>`, and whether lower or higher is better:
    #: what `fit.restore_best` keeps and `fit.early_stopping` watches
    monitor: tuple[str, str] = ("val/acc", "max")
    #: the prefix of the task's cache entries (`<prefix>teacher-<name>`, `<prefix>baseline`)
    cache_prefix: str = ""
    #: whether the dry run before training distils from copies of the teachers (hooks stay off the real ones)
    probe_copies_teachers: bool = True
    #: report columns the task adds to every row: FLOPs per sample; parameters that trained in this run
    count_flops: bool = True
    report_trainable: bool = False
    #: where the report writes each model's weights to measure bytes on disk (None: counted in memory)
    weights_folder: str | None = "models"

    # -- config and data -------------------------------------------------------------------------
    @abstractmethod
    def check_config(self, cfg: DictConfig) -> None:
        """Every recipe and data field, checked before anything is read (one line each)."""

    @abstractmethod
    def data_config(self, cfg: DictConfig) -> DictConfig:
        """The data config node (part of the cache keys)."""

    @abstractmethod
    def build_data(self, cfg: DictConfig) -> DataModule:
        """The data module, set up (it may write what it learnt into the config, e.g. the class count)."""

    # -- models ---------------------------------------------------------------------------------
    @abstractmethod
    def teachers(self, cfg: DictConfig) -> dict[str, ModelSpec]:
        """The teachers by name (none for self-distillation)."""

    @abstractmethod
    def student(self, cfg: DictConfig) -> StudentSpec:
        """The student."""

    @abstractmethod
    def build_model(self, node: DictConfig, what: str, seed: int, dm: Any, trains: bool) -> nn.Module:
        """A model from its config node, initialised from `seed`."""

    def cut_student(self, cfg: DictConfig, node: DictConfig, teacher: nn.Module, dm: Any) -> tuple[nn.Module, dict]:
        """The student cut from `teacher` as `node` says (`student.cut`), and what was done."""
        raise DistillError(f"student.cut: the {type(self).__name__} cannot cut a student from its teacher")

    def reinitialised(self, model: nn.Module, seed: int) -> nn.Module:
        """A copy of `model` with fresh weights from `seed`: a cut student's architecture trained alone."""
        from distill.cut import reinitialised

        return reinitialised(model, seed)

    def check_models(self, cfg: DictConfig, dm: Any, student: nn.Module, teachers: dict[str, nn.Module]) -> None:
        """Checks of the built models against each other and the data, before anything trains."""
        return None

    def cache_extra(self, dm: Any, node: DictConfig) -> dict[str, Any]:
        """Entries a cached model's key needs besides the recipe, data and trainer (e.g. a vocabulary size)."""
        return {}

    # -- training -------------------------------------------------------------------------------
    @abstractmethod
    def module(
        self,
        cfg: DictConfig,
        model: nn.Module,
        fit: DictConfig,
        dm: Any,
        stage: str,
        teachers: dict[str, nn.Module] | None = None,
        terms: dict[str, Any] | None = None,
    ) -> L.LightningModule:
        """The LightningModule training `model` with `fit`: on the data alone when `terms` is None (a
        teacher trained here, the baseline), else distilled from `teachers` by `terms`."""

    @abstractmethod
    def train_loader(self, dm: Any, fit: DictConfig, role: str) -> Batches:
        """Training batches for a stage of `role` (`teacher`, `baseline`, `student`)."""

    def val_loader(self, dm: Any) -> Batches:
        return dm.val_dataloader()

    def prepare_module(self, module: L.LightningModule, loader: Batches) -> None:
        """Anything a module needs from a real batch before its optimiser exists (e.g. building term parameters)."""
        return None

    # -- after training -------------------------------------------------------------------------
    @abstractmethod
    def save_student(self, path: Path, student: nn.Module, cfg: DictConfig, dm: Any) -> None:
        """Write the distilled student with what rebuilds it (`student.ckpt`)."""

    @abstractmethod
    def stage_context(self, dm: Any, out_dir: Path, redistill: Any) -> StageContext:
        """What compression stages may use: example inputs, calibration batches, the output folder."""

    def stage_input(self, student: nn.Module) -> nn.Module:
        """The module compression stages take (the student, or a wrapper with a plain tensor interface)."""
        return student

    #: the splits `evaluate` can report on (`report.split`)
    report_splits: tuple[str, ...] = ("test",)

    @abstractmethod
    def evaluate(
        self, models: dict[str, nn.Module | Path], dm: Any, teacher_names: list[str], split: str = "test"
    ) -> dict[str, dict]:
        """Metrics of every model on `split` (one of `report_splits`; a search reports on the validation split),
        and any per-model figures the task reports, by name."""

    @abstractmethod
    def validation_figure(self, name: str, model: nn.Module | Path, row: dict[str, Any], dm: Any) -> dict[str, float]:
        """The validation figure a search optimises for one model (`{"accuracy": ...}` or `{"perplexity": ...}`);
        `row` is its report row."""

    @abstractmethod
    def example_input(self, dm: Any) -> Tensor:
        """A real test input as the measured module takes it, batch of one: latency and FLOPs run on it."""

    def runner(self, model: nn.Module) -> nn.Module:
        """The module that takes `example_input` (the model itself, or a wrapper)."""
        return model

    @abstractmethod
    def summary(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The report's headline figures (the share of the teacher–baseline gap closed, ...)."""

    def report_extra(self, context: RunContext) -> dict[str, Any]:
        """Entries for the top level of report.json (e.g. the value a sweeper optimises)."""
        return {}


@dataclass
class RunContext:
    """What the spine knows at the end of a run, for a task's report."""

    cfg: DictConfig
    dm: Any
    models: dict[str, nn.Module]  # teachers, baseline, student (and born-again generations), by report name
    rows: list[dict[str, Any]]
    module: L.LightningModule  # the student's distillation module
    trainer: L.Trainer
    seconds: float  # the student's distillation, wall time
    out: Path
    loggers: list[Any]
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # stage -> per-epoch metrics
