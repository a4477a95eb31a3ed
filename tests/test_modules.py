"""The LightningModules: they train, teachers stay frozen and outside the student's state."""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from tests.builders import quiet_trainer as trainer
from torch import nn

from distill.data import UNLABELLED, TensorBatches
from distill.errors import DistillError
from distill.losses import FitNetLoss, HardLabelLoss, KDLoss
from distill.modules import DistillationModule, SupervisedModule
from distill.nets import MLP, ConvNet1d

ADAM = functools.partial(torch.optim.Adam, lr=1e-2)


def data(n: int = 256, length: int = 40, classes: int = 10, unlabelled: int = 0) -> TensorBatches:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, length, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    y[:unlabelled] = UNLABELLED
    return TensorBatches(x, y, batch_size=64, shuffle=True)


def distiller(teachers: dict[str, nn.Module], terms=None, **kwargs) -> DistillationModule:
    torch.manual_seed(0)
    student = MLP((40,), 10, hidden=(32,))
    terms = terms if terms is not None else {"hard": HardLabelLoss(0.5), "kd": KDLoss(0.5, temperature=4.0)}
    return DistillationModule(
        student, teachers, terms, ADAM, num_classes=10, example_input=torch.randn(2, 40), **kwargs
    )


def test_supervised_module_fast_dev_run_and_learning() -> None:
    torch.manual_seed(0)
    module = SupervisedModule(MLP((40,), 10), ADAM, num_classes=10, prefix="teacher")
    trainer(fast_dev_run=True).fit(module, data())
    loader = data()
    x, y = loader.x, loader.y
    before = nn.functional.cross_entropy(module(x), y).item()
    trainer(max_epochs=15).fit(module, loader)
    after = nn.functional.cross_entropy(module(x), y).item()
    assert after < before * 0.7  # it memorises random labels: the optimiser really steps


def test_distillation_module_fast_dev_run() -> None:
    module = distiller({"cnn": ConvNet1d((40,), 10)})
    trainer(fast_dev_run=True).fit(module, data(unlabelled=128), data())


def test_teachers_stay_frozen_in_eval_mode_through_training() -> None:
    teacher = ConvNet1d((40,), 10)  # has BatchNorm: its running statistics must not move
    snapshot = copy.deepcopy(teacher.state_dict())
    module = distiller({"cnn": teacher})
    seen_modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen_modes.append(teacher.training)

    trainer(max_epochs=3, callbacks=[Spy()]).fit(module, data(unlabelled=100), data())
    assert seen_modes and not any(seen_modes)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teachers_are_not_in_the_state_dict_nor_the_optimizer() -> None:
    teacher = ConvNet1d((40,), 10)
    module = distiller({"cnn": teacher})
    assert all(k.startswith(("net.", "terms.")) for k in module.state_dict())
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert optimised == {id(p) for p in module.net.parameters()}


def test_cached_teacher_outputs_train_exactly_like_running_the_teacher() -> None:
    teacher = ConvNet1d((40,), 10).eval()
    weights = []
    for cache in (True, False):
        module = distiller({"cnn": teacher}, cache_teacher_outputs=cache)
        trainer(max_epochs=2).fit(module, data(unlabelled=100))
        weights.append(torch.cat([p.detach().flatten() for p in module.net.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_each_term_is_logged_under_its_name() -> None:
    module = distiller({"cnn": ConvNet1d((40,), 10)})
    t = trainer(max_epochs=1)
    t.fit(module, data(unlabelled=100))
    logged = t.callback_metrics
    for name in ("student/train/hard", "student/train/kd", "student/train/loss"):
        assert name in logged and torch.isfinite(logged[name])
    total = 0.5 * logged["student/train/hard"] + 0.5 * logged["student/train/kd"]
    assert torch.isclose(logged["student/train/loss"], total, rtol=1e-4)


def test_multi_teacher_target_is_the_mean_of_logits() -> None:
    a, b = ConvNet1d((40,), 10), MLP((40,), 10)
    module = distiller({"a": a, "b": b})
    x = torch.randn(4, 40)
    out = module._run_teachers(x)
    view = module._view({"y": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)}, torch.zeros(4, 10), out)
    assert torch.allclose(view.teacher_logits, (a.eval()(x) + b.eval()(x)) / 2, atol=1e-6)


def test_feature_terms_get_hooks_and_a_trained_connector() -> None:
    term = FitNetLoss(student_layer="features.2", teacher_layer="head.0", weight=1.0)  # [B,32] -> [B,320]
    module = distiller({"cnn": ConvNet1d((40,), 10)}, terms={"fitnet": term})
    assert isinstance(term.connector, nn.Linear) and term.connector.weight.shape == (320, 32)
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in term.connector.parameters()} <= optimised  # trains with the student...
    assert not any(k.startswith("connector") for k in module.net.state_dict())  # ...but is not part of it
    t = trainer(max_epochs=8)
    first = None

    class First(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # metrics of the epoch before
            nonlocal first
            if first is None and trainer.current_epoch == 1:
                first = trainer.callback_metrics["student/train/fitnet"].item()

    t.callbacks.append(First())
    t.fit(module, data())
    assert t.callback_metrics["student/train/fitnet"].item() < 0.5 * first


def test_unconnectable_feature_shapes_are_refused() -> None:
    with pytest.raises(
        DistillError, match=r"cannot connect student features of shape \[32\] to teacher features of shape \[32, 10\]"
    ):
        distiller({"cnn": ConvNet1d((40,), 10)}, terms={"fitnet": FitNetLoss("features.2", "blocks.2")})


def test_wrong_feature_path_lists_valid_paths() -> None:
    with pytest.raises(DistillError, match=r"student has no module 'features\.9'.*features\.1"):
        distiller({"cnn": ConvNet1d((40,), 10)}, terms={"fitnet": FitNetLoss("features.9", "blocks.2")})
    with pytest.raises(DistillError, match=r"teacher 'cnn' has no module 'nope'.*blocks\.0"):
        distiller({"cnn": ConvNet1d((40,), 10)}, terms={"fitnet": FitNetLoss("features.2", "nope")})


def test_class_count_mismatch_is_refused() -> None:
    with pytest.raises(DistillError, match=r"teacher 'cnn' predicts 5.*student predicts 10"):
        distiller({"cnn": ConvNet1d((40,), 5)})


def test_no_teacher_or_no_term_is_refused() -> None:
    with pytest.raises(DistillError, match="at least one teacher"):
        distiller({})
    with pytest.raises(DistillError, match="at least one loss term"):
        distiller({"cnn": ConvNet1d((40,), 10)}, terms={})


def test_teacher_outputs_are_cached_under_bf16_true_precision() -> None:
    module = distiller({"cnn": ConvNet1d((40,), 10)})
    t = trainer(max_epochs=1, precision="bf16-true")
    t.fit(module, data(unlabelled=100))
    assert torch.isfinite(t.callback_metrics["student/train/kd"])
    assert next(module.net.parameters()).dtype == torch.bfloat16


def test_validation_uses_the_teachers_cached_predictions() -> None:
    teacher = ConvNet1d((40,), 10).eval()
    module = distiller({"cnn": teacher})
    val = data(n=100)
    seen = []

    class Check(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append(pl_module._val_teacher.clone())

    t = trainer(max_epochs=2, callbacks=[Check()], num_sanity_val_steps=0)
    t.fit(module, data(unlabelled=100), val)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    assert torch.allclose(seen[0], teacher(val.x), atol=1e-5)
    assert module._val_teacher is None  # dropped when training ends
    agreement = (module.net(val.x).argmax(-1) == teacher(val.x).argmax(-1)).float().mean()
    assert t.callback_metrics["student/val/agreement"].item() == pytest.approx(agreement.item(), abs=1e-6)


def test_epoch_means_are_the_same_whatever_the_flush_interval(monkeypatch) -> None:
    """Step values are summed in groups (`FLUSH_EVERY`): the logged epoch means do not depend on the group size."""
    teacher = MLP((40,), 10, hidden=(64,))
    logged = []
    for every in (1, 3, 256):
        monkeypatch.setattr(DistillationModule, "FLUSH_EVERY", every)
        module = distiller({"t": teacher})
        t = trainer(max_epochs=2)
        t.fit(module, data(n=448))  # 7 steps an epoch: groups of 3 leave one step over at the epoch's end
        logged.append({k: float(v) for k, v in t.callback_metrics.items() if "/train/" in k})
    assert set(logged[0]) == {"student/train/hard", "student/train/kd", "student/train/loss"}
    for other in logged[1:]:
        assert other == pytest.approx(logged[0], rel=1e-6)


def test_epoch_mean_is_the_mean_of_the_step_values() -> None:
    module = distiller({"t": MLP((40,), 10, hidden=(64,))})
    module.FLUSH_EVERY = 2
    for v in (1.0, 2.0, 4.0, 8.0, 16.0):
        module.accumulate({"a": torch.tensor(v), "b": torch.tensor(-v)})
    module._flush()
    assert module._steps == 5
    assert (module._sums / module._steps).tolist() == pytest.approx([6.2, -6.2], rel=1e-7)


def test_fast_attribute_path_keeps_nn_module_semantics() -> None:
    """Plain values take a shortcut past nn.Module.__setattr__, except under a parameter's, buffer's or submodule's name."""
    module = distiller({"t": MLP((40,), 10, hidden=(64,))})
    module._current_fx_name = "training_step"
    assert module.__dict__["_current_fx_name"] == "training_step"
    module.automatic_optimization = True  # a property with a setter still runs its setter
    assert module.automatic_optimization is True and module._automatic_optimization is True
    module.register_buffer("scale", torch.ones(1))
    module.scale = None  # a buffer set to None stays registered, holding None (as nn.Module does it)
    assert "scale" in module._buffers and module._buffers["scale"] is None and "scale" not in module.__dict__
    module.extra = nn.Linear(2, 2)
    module.extra = None  # so does a submodule
    assert "extra" in module._modules and module._modules["extra"] is None
    with pytest.raises(TypeError):
        module.net = 3  # nn.Module refuses a non-module under a submodule's name (not a plain value's path)
