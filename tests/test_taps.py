"""FeatureTaps: forward hooks that keep the latest output of named submodules."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.nets import MLP
from distill.taps import FeatureTaps


def small_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_taps_capture_outputs_of_sequential_children() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, ["0", "1"])
    x = torch.randn(5, 4)
    out = model(x)
    assert set(taps.outputs) == {"0", "1"}
    hidden = model[0](x)
    torch.testing.assert_close(taps.outputs["0"], hidden)
    torch.testing.assert_close(taps.outputs["1"], hidden.relu())
    torch.testing.assert_close(model[2](taps.outputs["1"]), out)


def test_taps_hold_the_latest_forward() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, ["2"])
    model(torch.randn(5, 4))
    x = torch.randn(2, 4)
    out = model(x)
    assert taps.outputs["2"].shape == (2, 3)
    torch.testing.assert_close(taps.outputs["2"], out)


def test_taps_capture_nested_paths_of_mlp() -> None:
    model = MLP(input_shape=(2, 4), num_classes=3, hidden=(7, 5))
    taps = FeatureTaps(model, ["features", "features.0", "features.1", "features.2", "head"])
    x = torch.randn(6, 2, 4)
    logits = model(x)
    torch.testing.assert_close(taps.outputs["features.0"], x.flatten(1))  # Flatten
    assert taps.outputs["features.1"].shape == (6, 7)  # first Linear
    assert (taps.outputs["features.1"] < 0).any()
    torch.testing.assert_close(taps.outputs["features.2"], taps.outputs["features.1"].relu())  # its ReLU
    assert taps.outputs["features"].shape == (6, 5)
    torch.testing.assert_close(taps.outputs["head"], logits)
    torch.testing.assert_close(model.head(taps.outputs["features"]), logits)


def test_taps_keep_gradients_of_captured_features() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, ["0"])
    model(torch.randn(3, 4))
    taps.outputs["0"].sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_duplicate_paths_are_tapped_once() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, ["0", "0", "2"])
    assert taps.paths == ["0", "2"]
    assert len(model[0]._forward_hooks) == 1


def test_no_paths_taps_nothing() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, [])
    model(torch.randn(1, 4))
    assert taps.outputs == {}


@pytest.mark.parametrize("path", ["3", "features.9", "nope", ""])
def test_wrong_path_lists_valid_paths(path: str) -> None:
    model = MLP(input_shape=(4,), num_classes=3, hidden=(5,))
    with pytest.raises(DistillError) as err:
        FeatureTaps(model, ["head", path], owner="student")
    message = str(err.value)
    assert message.startswith(f"student has no module '{path}'")
    valid = [name for name, _ in model.named_modules() if name]
    assert valid == ["features", "features.0", "features.1", "features.2", "head"]
    assert "valid module paths: " + ", ".join(valid) in message


def test_failed_taps_leave_no_hooks_behind() -> None:
    model = small_sequential()
    with pytest.raises(DistillError):
        FeatureTaps(model, ["0", "missing"])
    assert all(not m._forward_hooks for m in model.modules())


def test_remove_detaches_hooks() -> None:
    model = small_sequential()
    taps = FeatureTaps(model, ["0", "2"])
    model(torch.randn(2, 4))
    before = {k: v.clone() for k, v in taps.outputs.items()}
    assert all(model[i]._forward_hooks for i in (0, 2))
    taps.remove()
    assert all(not m._forward_hooks for m in model.modules())
    model(torch.randn(7, 4))  # a new forward no longer updates the outputs
    assert set(taps.outputs) == set(before)
    for k, v in before.items():
        torch.testing.assert_close(taps.outputs[k], v)
    taps.remove()  # removing twice is harmless


def test_remove_leaves_other_taps_working() -> None:
    model = small_sequential()
    first, second = FeatureTaps(model, ["0"]), FeatureTaps(model, ["0"])
    first.remove()
    model(torch.randn(3, 4))
    assert "0" not in first.outputs
    assert second.outputs["0"].shape == (3, 6)


class TupleOut(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * 2, x * 3


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleOut()

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)[1]


def test_tuple_outputs_take_the_first_item() -> None:
    model = Wrapper()
    taps = FeatureTaps(model, ["block"])
    x = torch.ones(2, 2)
    model(x)
    torch.testing.assert_close(taps.outputs["block"], x * 2)
