"""Quantisation-aware training (torchao): the model trains with int8 fake quantisers, then converts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from tests.conftest import compose_config, tiny_job
from torch import nn

from distill.compress.base import StageContext
from distill.compress.qat import Qat
from distill.errors import DistillError
from distill.measure import count_nonzero_parameters, latency_ms
from distill.nets import MLP, ConvNet1d


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in 32 dimensions, easy for an MLP."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 32, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.randint(0, 4, (n,), generator=gen)
    return centres[y] + torch.randn(n, 32, generator=gen), y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.eval()(x).argmax(-1) == y).float().mean().item()


class Trainer:
    """A stand-in for the pipeline's redistillation: plain cross-entropy on the blobs, recording what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, model: nn.Module, epochs: int, lr: float) -> None:
        self.seen = [type(m).__name__ for m in model.modules()]
        x, y = blobs(512, seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            for i in range(0, len(x), 64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
                opt.step()


def trained_mlp() -> MLP:
    torch.manual_seed(0)
    model = MLP((32,), 4, hidden=(64,))
    Trainer()(model, 5, 0.01)
    return model


def context(tmp_path: Path, trainer: Trainer | None) -> StageContext:
    return StageContext(blobs(16, seed=2)[0], [], tmp_path, 4, trainer)


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def test_qat_trains_fake_quantised_and_converts_to_int8(tmp_path: Path) -> None:
    model, trainer = trained_mlp(), Trainer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Qat(epochs=3, lr=0.003).apply(model, context(tmp_path, trainer))
    assert trainer.seen.count("FakeQuantizedLinear") == 2  # the training saw int8 fake quantisers
    q = result.model
    for layer in (q.features[1], q.head):
        assert layer.weight.qdata.dtype == torch.int8
        assert int(layer.weight.qdata.abs().max()) == 127  # symmetric per-channel: each row's max maps to 127
    assert result.info["layers_quantised"] == 2
    assert result.info["max_abs_diff_vs_fake_quant"] < 1e-3  # conversion reproduces what was trained
    for key, value in model.state_dict().items():  # the input model is untouched
        assert torch.equal(value, before[key])
    assert state_bytes(q) < 0.6 * state_bytes(model)  # 2,372 weights: int8 plus per-row scales and pickle overhead
    x, y = blobs(1000, seed=3)
    assert accuracy(model, x, y) > 0.9
    assert abs(accuracy(q, x, y) - accuracy(model, x, y)) <= 0.02
    assert count_nonzero_parameters(q) <= sum(p.numel() for p in model.parameters())
    assert latency_ms(q, x, 4, repeats=2, warmup=1) > 0  # measurable on the CPU as it is


def test_qat_float_conversion_keeps_plain_linears_for_onnx(tmp_path: Path) -> None:
    model = trained_mlp()
    result = Qat(epochs=2, convert="float").apply(model, context(tmp_path, Trainer()))
    linears = [m for m in result.model.modules() if isinstance(m, nn.Linear)]
    assert [type(m) for m in linears] == [nn.Linear, nn.Linear]
    assert all(type(p) is nn.Parameter for p in result.model.parameters())
    assert not torch.equal(linears[0].weight, model.state_dict()[next(iter(model.state_dict()))])
    assert 0 < result.info["max_abs_diff_vs_fake_quant"] < 0.5  # only the rounding is gone
    x, y = blobs(1000, seed=3)
    assert abs(accuracy(result.model, x, y) - accuracy(model, x, y)) <= 0.02


def test_qat_group_size_quantises_per_group(tmp_path: Path) -> None:
    result = Qat(epochs=1, group_size=16).apply(trained_mlp(), context(tmp_path, Trainer()))
    first = next(m for m in result.model.modules() if isinstance(m, nn.Linear))
    assert first.weight.scale.shape == (64, 2)  # 32 inputs in groups of 16, one scale per group and row


def test_qat_errors(tmp_path: Path) -> None:
    ctx = context(tmp_path, Trainer())
    with pytest.raises(DistillError, match="layer 'features.1' has 32 input features, not a multiple of group_size=24"):
        Qat(group_size=24).apply(trained_mlp(), ctx)
    with pytest.raises(DistillError, match="Sequential has no nn.Linear layer"):
        Qat().apply(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()), ctx)
    with pytest.raises(DistillError, match="list it before onnx/int8"):
        Qat().apply(tmp_path / "student.onnx", ctx)
    with pytest.raises(DistillError, match="needs the run's teachers"):
        Qat().apply(trained_mlp(), context(tmp_path, None))
    for kwargs, match in [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": -1}, "lr must be a positive number"),
        ({"group_size": 0}, "group_size must be a positive integer"),
        ({"convert": "tflite"}, "convert must be one of torchao, float"),
    ]:
        with pytest.raises(DistillError, match=match):
            Qat(**kwargs)


def test_qat_applies_to_the_linear_layers_of_a_convnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ConvNet1d((32,), 4, channels=(8, 8))
    trainer = Trainer()
    result = Qat(epochs=1).apply(net, context(tmp_path, trainer))
    linears = [m for m in net.modules() if type(m) is nn.Linear]
    assert result.info["layers_quantised"] == len(linears) >= 1
    assert trainer.seen.count("FakeQuantizedLinear") == len(linears)


@pytest.mark.slow
def test_qat_in_the_main_job(tmp_path: Path) -> None:
    from distill.spine import run

    overrides = tiny_job(tmp_path, "student=mlp", "compress=[qat]", "compress.qat.epochs=2")
    rows = {r["model"]: r for r in run(compose_config(overrides))["models"]}
    student, qat = rows["student"], rows["compress:qat"]
    assert qat["bytes"] < 0.45 * student["bytes"]
    assert qat["parameters"] == student["parameters"]
    assert abs(qat["accuracy"] - student["accuracy"]) <= 0.05
    assert qat["stage"]["layers_quantised"] == 3
    assert (tmp_path / "run" / "checkpoints" / "compress_qat").is_dir()
