"""What every LightningModule of the project shares.

`TeacherStudentModule` is the base of every task's modules: the model being trained (`net`), frozen
teachers kept outside the registered children (not in the optimiser, not in checkpoints, not wrapped
by DDP, yet following the module across devices and staying in eval mode; under FSDP they join the
module tree so that it shards them too, see `configure_model`), train mode at the start of fit,
shuffling by epoch number, and the optimiser and scheduler built from config partials.
`ClassifierModule` adds what the classification modules share: manual optimisation, epoch-mean
logging and validation accuracy.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from distill.errors import DistillError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
# Values that nn.Module.__setattr__ stores as plain attributes whatever their name, unless the name is a
# parameter's, a buffer's or a submodule's (see TeacherStudentModule.__setattr__).
_PLAIN_VALUES = frozenset({str, int, float, bool, type(None)})
SchedulerFactory = Callable[..., Any]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher's weights and BatchNorm statistics never move."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# Names that wrappers (FSDP, activation checkpointing, torch.compile) insert in parameter names.
WRAPPER_NAMES = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def _unwrapped(name: str) -> str:
    """A state-dict key or prefix without the names wrappers insert."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAMES)


class FrozenModules(nn.ModuleDict):
    """Frozen models as registered submodules, yet not part of what is saved or loaded.

    A strategy that places and shards the module tree itself (FSDP) reaches them, while
    `state_dict` has no entry for them (nor does it visit them: a sharded model is not gathered to
    be dropped), `load_state_dict` expects none (a strict load of a checkpoint without them
    succeeds), and they stay in eval mode whatever mode the module around them is put in.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            try:
                self[name] = module
            except (KeyError, TypeError) as err:
                raise DistillError(f"teacher name {name!r} cannot name a submodule ({err}): rename it") from None
        self._loaded_prefix: str | None = None
        self.register_load_state_dict_post_hook(FrozenModules._expect_nothing)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        return OrderedDict() if destination is None else destination

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._loaded_prefix = prefix  # where this container sits in the state dict being loaded
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _expect_nothing(module: FrozenModules, incompatible: Any) -> None:
        # Compared without wrappers' names: FSDP reports missing keys without its `_fsdp_wrapped_module.`.
        if module._loaded_prefix is not None:
            prefix = _unwrapped(module._loaded_prefix)
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if not _unwrapped(k).startswith(prefix)
            ]

    def train(self, mode: bool = True) -> FrozenModules:
        return super().train(False)


def fsdp_units_for(policy: Any, modules: Iterable[nn.Module]) -> Any:
    """FSDP's `auto_wrap_policy` with each of `modules` made its own unit besides what `policy` wraps.

    Frozen weights in a unit of their own never share a flat parameter (nor its gradient buffer)
    with trained ones. `policy`: None, a policy object (ModuleWrapPolicy, CustomPolicy, ...) or a
    policy function (`size_based_auto_wrap_policy`, ...); the result is of the same kind.
    """
    from torch.distributed.fsdp.wrap import CustomPolicy, _Policy  # noqa: PLC0415

    chosen = tuple(modules)

    def is_chosen(module: nn.Module) -> bool:
        return any(module is m for m in chosen)

    if policy is None:
        return CustomPolicy(is_chosen)
    if isinstance(policy, _Policy):

        class WithUnits(_Policy):
            def _run_policy(self, root_module: nn.Module, ignored_modules: Any, root_kwargs: dict) -> dict:
                targets = policy._run_policy(root_module, ignored_modules, root_kwargs)
                for module in chosen:
                    if module not in ignored_modules:
                        targets.setdefault(module, copy.copy(root_kwargs))
                return targets

        return WithUnits()

    def with_units(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:  # look inside everything: the chosen modules may sit anywhere
            return True
        return is_chosen(module) or bool(policy(module=module, recurse=False, nonwrapped_numel=nonwrapped_numel))

    return with_units


class TeacherStudentModule(L.LightningModule):
    """Trains `net`, optionally from frozen `teachers` (a plain dict: not submodules, but see `configure_model`)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        teachers: Mapping[str, nn.Module] | None = None,
        prefix: str = "model",
    ) -> None:
        super().__init__()
        self.net = net
        self.teachers = {name: freeze(t) for name, t in (teachers or {}).items()}
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # "epoch": the scheduler steps once an epoch; "step": once an optimiser step, and is built with
        # total_steps (the run's optimiser steps: OneCycleLR's warm-up and annealing over the whole run).
        self.scheduler_interval = "epoch"
        self.prefix = prefix

    def __setattr__(self, name: str, value: Any) -> None:
        """`nn.Module.__setattr__`, with a fast path for plain values (str, numbers, None) under other names.

        Lightning sets `_current_fx_name` (and a few flags) on the module around every hook it calls,
        some 30 times per training step; `nn.Module.__setattr__` checks each value against Parameter,
        Module and Buffer first (about 1.4 µs each, against 0.4 µs here), a cost that counts for small
        students whose step takes well under a millisecond. A name that is already a parameter, a buffer
        or a submodule takes the usual path (assigning None to it unregisters it there).
        """
        d = self.__dict__
        if type(value) in _PLAIN_VALUES and "_parameters" in d:
            if name not in d["_parameters"] and name not in d["_buffers"] and name not in d["_modules"]:
                object.__setattr__(self, name, value)
                return
        super().__setattr__(name, value)

    # -- teachers follow the module but stay frozen ------------------------------------------
    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> TeacherStudentModule:
        super()._apply(fn, *args, **kwargs)
        if not isinstance(self.teachers, nn.Module):  # registered teachers (FSDP) have followed already
            for teacher in self.teachers.values():
                teacher._apply(fn, *args, **kwargs)
        return self

    def configure_model(self) -> None:
        """Under FSDP, the teachers join the module tree (`register_teachers`), each as its own FSDP unit.

        FSDP places and shards only the module tree, so a teacher outside it would stay whole, on
        the CPU. Registered, a teacher is sharded like the student (a teacher that does not fit one
        device is what FSDP is for) while staying frozen, in eval mode, out of the optimiser (no
        parameter of it requires gradients) and out of checkpoints (`FrozenModules`). Lightning
        calls this before the strategy wraps the module; other strategies leave the teachers as they are.
        """
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, FSDPStrategy) or not self.teachers or isinstance(self.teachers, nn.Module):
            return
        for name, teacher in self.teachers.items():
            if any(hasattr(p, "__tensor_flatten__") for p in teacher.parameters()):
                raise DistillError(
                    f"teacher '{name}' has quantised weights, which FSDP cannot shard: keep it in bfloat16 or float16"
                )
        self.register_teachers()
        strategy.kwargs["auto_wrap_policy"] = fsdp_units_for(
            strategy.kwargs.get("auto_wrap_policy"), self.teachers.values()
        )

    def register_teachers(self) -> None:
        """The teachers as registered submodules (`self.teachers` becomes a `FrozenModules`), still frozen and unsaved."""
        if not isinstance(self.teachers, nn.Module):
            self.teachers = FrozenModules(self.teachers)

    def train(self, mode: bool = True) -> TeacherStudentModule:
        super().train(mode)
        for teacher in self.teachers.values():
            teacher.eval()
        return self

    def on_fit_start(self) -> None:
        # A net built or loaded in eval mode (as from_pretrained gives them) would train with dropout
        # off and BatchNorm statistics frozen, and Lightning leaves modes as they are: train mode for
        # training (teachers stay in eval mode, see `train`).
        self.train()

    def on_train_epoch_start(self) -> None:
        # Shuffle by epoch number, not by how many epochs this process has run: a resumed run sees the same batches.
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]  # the net, and the terms' own (connectors)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step":
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}


class ClassifierModule(TeacherStudentModule):
    """Classification: logs epoch means of the step values, and validation accuracy.

    Small students take well under a millisecond per step, so per-step bookkeeping is kept
    out of the hot path: values are summed on the device and logged once per epoch (calling
    `self.log` every step costs more than the step), and the optimiser is stepped in
    `training_step` (Lightning's manual optimisation) rather than through the closure machinery
    of automatic optimisation. Gradient clipping is therefore set here (`gradient_clip_val`),
    not on the Trainer.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        prefix: str = "model",
        gradient_clip_val: float | None = None,
        teachers: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, teachers, prefix)
        self.automatic_optimization = False
        self.gradient_clip_val = gradient_clip_val
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._names: list[str] = []
        self._sums: Tensor | None = None
        self._pending: list[list[Tensor]] = []
        self._steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    #: steps whose values are held as they are before being added to the epoch sums in one operation
    FLUSH_EVERY = 256

    def accumulate(self, values: dict[str, Tensor]) -> None:
        """Add this step's values (the same names every step) to the running epoch sums.

        The step's (detached) values are kept as they are and summed every `FLUSH_EVERY` steps and at the
        epoch's end: one stack and one addition per step would cost more than the rest of this method.
        """
        if not self._names:
            self._names = list(values)
        self._pending.append([v.detach() for v in values.values()])
        self._steps += 1
        if len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            total = torch.stack([torch.stack(row) for row in self._pending]).sum(0)
            self._sums = total if self._sums is None else self._sums + total
            self._pending = []

    def optimize(self, loss: Tensor) -> None:
        """One optimiser step on `loss` (backward, optional clipping, step)."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._flush()
        if self._sums is not None:
            for name, total in zip(self._names, self._sums / self._steps, strict=True):
                self.log(f"{self.prefix}/train/{name}", total, prog_bar=name == "loss", sync_dist=True)
        self._sums, self._steps = None, 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_acc(self(batch["x"]), batch["y"])
        self.log(f"{self.prefix}/val/acc", self.val_acc, prog_bar=True)
