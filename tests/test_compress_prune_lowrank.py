"""Pruning and low-rank stages: sparsity and thresholds checked by hand, parameter counts computed from the
architecture, SVD errors checked against Eckart–Young, and the input model left untouched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from distill.compress.base import StageContext
from distill.compress.lowrank import LowRank
from distill.compress.prune import MagnitudePrune, StructuredPrune
from distill.errors import DistillError
from distill.nets import MLP, ConvNet1d

NUM_CLASSES = 10


@pytest.fixture
def ctx(tmp_path: Path) -> StageContext:
    gen = torch.Generator().manual_seed(0)
    return StageContext(
        example_input=torch.randn(8, 40, generator=gen),
        calibration=[torch.randn(16, 40, generator=gen) for _ in range(2)],
        out_dir=tmp_path,
        num_classes=NUM_CLASSES,
    )


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP((40,), NUM_CLASSES, hidden=(64, 64))


def convnet() -> ConvNet1d:
    torch.manual_seed(0)
    return ConvNet1d((40,), NUM_CLASSES, channels=(16, 16, 16))


def snapshot(model: nn.Module) -> tuple[str, dict[str, Tensor]]:
    return repr(model), {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: tuple[str, dict[str, Tensor]]) -> None:
    text, state = before
    assert repr(model) == text
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key
    for module in model.modules():
        assert not module._forward_pre_hooks


# -- MagnitudePrune ------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_magnitude_prune_reaches_target_and_zeroes_the_smallest_weights(ctx: StageContext, amount: float) -> None:
    model = mlp()
    before = snapshot(model)
    result = MagnitudePrune(amount=amount).apply(model, ctx)
    pruned = result.model
    assert pruned is not model

    names = ["features.1", "features.3", "head"]
    originals = [model.get_submodule(n).weight.detach() for n in names]
    total = sum(w.numel() for w in originals)
    assert total == 40 * 64 + 64 * 64 + 64 * 10
    k = round(amount * total)

    # the global threshold by hand: the k-th smallest magnitude over all three weight tensors
    magnitudes = torch.cat([w.abs().flatten() for w in originals]).sort().values
    threshold = magnitudes[k - 1]
    assert magnitudes[k] > threshold  # no tie at the boundary, so the set of pruned weights is unique

    zeros = 0
    for name, original in zip(names, originals, strict=True):
        layer = pruned.get_submodule(name)
        assert isinstance(layer.weight, nn.Parameter)
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
        assert "weight_orig" not in dict(layer.named_parameters())
        assert not layer._forward_pre_hooks
        expected = torch.where(original.abs() <= threshold, torch.zeros_like(original), original)
        assert torch.equal(layer.weight.detach(), expected)
        assert torch.equal(layer.bias.detach(), model.get_submodule(name).bias.detach())  # biases untouched
        zeros += int((layer.weight == 0).sum())

    assert zeros == k
    info = result.info
    assert info["pruned_parameters"] == k
    assert info["target"] == amount
    assert abs(info["sparsity"] - amount) <= 1 / total
    assert info["sparsity"] == pytest.approx(k / total)
    assert set(pruned.state_dict()) == set(model.state_dict())
    assert pruned(ctx.example_input).shape == (8, NUM_CLASSES)
    assert_unchanged(model, before)


def test_magnitude_prune_convnet_and_layer_selection(ctx: StageContext) -> None:
    model = convnet()
    result = MagnitudePrune(amount=0.5, layers=["Conv1d"]).apply(model, ctx)
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv1d)]
    total = sum(c.weight.numel() for c in convs)
    assert total == 1 * 16 * 5 + 2 * 16 * 16 * 5
    assert sum(int((c.weight == 0).sum()) for c in convs) == round(0.5 * total)
    assert result.info["sparsity"] == pytest.approx(round(0.5 * total) / total)
    assert torch.equal(result.model.head[2].weight, model.head[2].weight)  # the Linear head was not selected
    assert int((result.model.head[2].weight == 0).sum()) == 0


def test_magnitude_prune_without_prunable_layers_names_the_model(ctx: StageContext) -> None:
    with pytest.raises(DistillError, match=r"Sequential.*Linear, Conv1d, Conv2d"):
        MagnitudePrune().apply(nn.Sequential(nn.Flatten(), nn.ReLU()), ctx)
    with pytest.raises(DistillError, match=r"MLP.*Conv2d"):
        MagnitudePrune(layers=("Conv2d",)).apply(mlp(), ctx)


@pytest.mark.parametrize("amount", [0, 0.0, 1, 1.0, 1.5, -0.1, True, "0.5", None])
def test_magnitude_prune_rejects_bad_amounts(amount: object) -> None:
    with pytest.raises(DistillError, match="amount"):
        MagnitudePrune(amount=amount)  # type: ignore[arg-type]


def test_magnitude_prune_rejects_unknown_layer_types() -> None:
    with pytest.raises(DistillError, match="Lnear"):
        MagnitudePrune(layers=("Lnear",))
    with pytest.raises(DistillError, match="at least one"):
        MagnitudePrune(layers=())


# -- StructuredPrune -----------------------------------------------------------------------------


def mlp_parameters(h1: int, h2: int) -> int:
    return (40 * h1 + h1) + (h1 * h2 + h2) + (h2 * NUM_CLASSES + NUM_CLASSES)


@pytest.mark.parametrize(("ratio", "kept"), [(0.5, 32), (0.25, 48)])
def test_structured_prune_shrinks_mlp_hidden_layers(ctx: StageContext, ratio: float, kept: int) -> None:
    model = mlp()
    before = snapshot(model)
    result = StructuredPrune(ratio=ratio).apply(model, ctx)
    pruned = result.model
    assert pruned is not model

    assert [pruned.features[1].out_features, pruned.features[3].out_features] == [kept, kept]
    assert pruned.features[1].in_features == 40  # the inputs are never pruned
    assert pruned.head.in_features == kept and pruned.head.out_features == NUM_CLASSES
    # the hidden-to-hidden matrix keeps exactly (1 - ratio)² of its weights
    assert pruned.features[3].weight.numel() == (1 - ratio) ** 2 * 64 * 64

    info = result.info
    assert info["parameters_before"] == mlp_parameters(64, 64) == 7434
    assert info["parameters_after"] == mlp_parameters(kept, kept) == sum(p.numel() for p in pruned.parameters())
    assert info["parameters_after"] < (1 - ratio) * info["parameters_before"]
    assert info["ratio"] == ratio

    out = pruned(ctx.example_input)
    assert out.shape == (8, NUM_CLASSES) and torch.isfinite(out).all()
    assert pruned.training == model.training
    assert_unchanged(model, before)


def test_structured_prune_keeps_the_highest_l2_neurons(ctx: StageContext) -> None:
    """A neuron of the first layer with a huge weight row survives; one with a zero row is removed."""
    model = mlp()
    with torch.no_grad():
        model.features[1].weight[7] = 100.0
        model.features[1].weight[9] = 0.0
        model.features[1].bias[9] = 0.0
        model.features[3].weight[:, 9] = 0.0
    pruned = StructuredPrune(ratio=0.5).apply(model, ctx).model
    rows = pruned.features[1].weight
    assert (rows == 100.0).all(dim=1).sum() == 1  # the big row is still there
    assert not (rows == 0).all(dim=1).any()  # the zero row is gone


def test_structured_prune_convnet_shrinks_channels_and_batchnorm(ctx: StageContext) -> None:
    model = convnet()
    model.train()
    before = snapshot(model)
    result = StructuredPrune(ratio=0.5).apply(model, ctx)
    pruned = result.model
    for i in range(3):
        conv, bn = pruned.blocks[i][0], pruned.blocks[i][1]
        assert conv.out_channels == 8
        assert conv.in_channels == (1 if i == 0 else 8)
        assert bn.num_features == 8
        assert bn.weight.shape == bn.running_mean.shape == bn.running_var.shape == (8,)
    # length 40 → 40 → 20 → 10, so the head reads 8 channels × 10 positions
    assert pruned.head[2].in_features == 80 and pruned.head[2].out_features == NUM_CLASSES
    assert result.info["parameters_before"] == 4394
    expected = (1 * 8 * 5 + 8) + 2 * (8 * 8 * 5 + 8) + 3 * 16 + (80 * 10 + 10)
    assert result.info["parameters_after"] == expected == 1562
    assert pruned.training  # the train/eval flag is restored
    pruned.eval()
    assert pruned(ctx.example_input).shape == (8, NUM_CLASSES)
    assert_unchanged(model, before)


def test_structured_prune_honours_ignore(ctx: StageContext) -> None:
    pruned = StructuredPrune(ratio=0.5, ignore=("features.1",)).apply(mlp(), ctx).model
    assert pruned.features[1].out_features == 64
    assert pruned.features[3].in_features == 64
    assert pruned.features[3].out_features == 32


def test_structured_prune_errors(ctx: StageContext) -> None:
    with pytest.raises(DistillError, match="no module named features.9"):
        StructuredPrune(ignore=("features.9",)).apply(mlp(), ctx)
    with pytest.raises(DistillError, match=r"no prunable layer group in Sequential"):
        StructuredPrune().apply(nn.Sequential(nn.Flatten(), nn.Linear(40, NUM_CLASSES)), ctx)
    other = StageContext(ctx.example_input, ctx.calibration, ctx.out_dir, num_classes=7)
    with pytest.raises(DistillError, match="out_features == 7"):
        StructuredPrune().apply(mlp(), other)
    for ratio in (0, 1, 1.0, -0.5, 2):
        with pytest.raises(DistillError, match="ratio"):
            StructuredPrune(ratio=ratio)


# -- LowRank -------------------------------------------------------------------------------------


def tail_error(weight: Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(weight.detach().double().reshape(weight.shape[0], -1))
    return math.sqrt(float((s[rank:] ** 2).sum()) / float((s**2).sum()))


def test_lowrank_reproduces_an_exactly_rank_three_linear(ctx: StageContext) -> None:
    gen = torch.Generator().manual_seed(1)
    layer = nn.Linear(20, 30)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 3, generator=gen) @ torch.randn(3, 20, generator=gen))
    model = nn.Sequential(layer)
    x = torch.randn(16, 20, generator=gen)
    result = LowRank(rank_ratio=None, energy=0.9999).apply(model, ctx)
    factored = result.model[0]
    assert isinstance(factored, nn.Sequential) and len(factored) == 2
    assert (factored[0].in_features, factored[0].out_features, factored[0].bias) == (20, 3, None)
    assert (factored[1].in_features, factored[1].out_features) == (3, 30)
    assert torch.equal(factored[1].bias, layer.bias)
    assert result.info["layers"]["0"]["rank"] == 3
    assert result.info["layers"]["0"]["relative_error"] < 1e-5
    assert result.info["parameters_before"] == 30 * 20 + 30
    assert result.info["parameters_after"] == 3 * (20 + 30) + 30
    assert torch.allclose(result.model(x), model(x), atol=1e-5, rtol=1e-5)
    assert isinstance(model[0], nn.Linear)  # the input model keeps its layer


def test_lowrank_rank_ratio_and_eckart_young_on_mlp(ctx: StageContext) -> None:
    model = mlp()
    before = snapshot(model)
    result = LowRank(rank_ratio=0.33).apply(model, ctx)
    info = result.info
    # features.1: 64×40 → ceil(0.33·40) = 14; head: 10×64 → ceil(3.3) = 4;
    # features.3: 64×64 → ceil(21.12) = 22, 22·128 = 2816 < 4096, so it is factorised too
    assert {name: layer["rank"] for name, layer in info["layers"].items()} == {
        "features.1": 14,
        "features.3": 22,
        "head": 4,
    }
    for name, layer in info["layers"].items():
        original = model.get_submodule(name).weight
        assert layer["relative_error"] == pytest.approx(tail_error(original, layer["rank"]), abs=1e-5)
        assert 0.0 < layer["relative_error"] < 1.0
    assert info["skipped"] == []
    expected = (14 * (40 + 64) + 64) + (22 * (64 + 64) + 64) + (4 * (64 + 10) + 10)
    assert info["parameters_after"] == expected == sum(p.numel() for p in result.model.parameters())
    assert info["parameters_before"] == 7434
    assert result.model(ctx.example_input).shape == (8, NUM_CLASSES)
    assert_unchanged(model, before)


def test_lowrank_output_matches_the_truncated_svd(ctx: StageContext) -> None:
    """The factorised layer computes x·W_rᵀ + b with W_r the best rank-r approximation, and a fast-decaying
    spectrum kept at 99.9999 % of its energy gives nearly the original output."""
    gen = torch.Generator().manual_seed(2)
    q1, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen))
    s = 0.5 ** torch.arange(32, dtype=torch.float32)
    layer = nn.Linear(32, 48)
    with torch.no_grad():
        layer.weight.copy_(q1[:, :32] @ torch.diag(s) @ q2.T)
    model = nn.Sequential(layer)
    x = torch.randn(64, 32, generator=gen)
    result = LowRank(rank_ratio=None, energy=0.999999).apply(model, ctx)
    rank = result.info["layers"]["0"]["rank"]
    # smallest r with Σ_{i<r} 4^{-i} / Σ 4^{-i} ≥ 0.999999, i.e. 4^{-r} ≤ 1e-6 (up to the 32-term tail): r = 10
    assert rank == 10
    u, sv, vh = torch.linalg.svd(layer.weight.detach().double())
    w_r = (u[:, :rank] * sv[:rank]) @ vh[:rank]
    expected = (x.double() @ w_r.T + layer.bias.detach().double()).float()
    assert torch.allclose(result.model(x), expected, atol=1e-5)
    y = model(x)
    with torch.no_grad():
        assert float((result.model(x) - y).norm() / y.norm()) < 1e-3


def test_lowrank_skips_layers_that_would_not_shrink(ctx: StageContext) -> None:
    model = mlp()
    result = LowRank(rank_ratio=0.5).apply(model, ctx)
    # features.3: r = 32 and 32·(64+64) = 4096 = 64·64, no saving → skipped
    assert set(result.info["layers"]) == {"features.1", "head"}
    assert [item["layer"] for item in result.info["skipped"]] == ["features.3"]
    assert "4096 >= 4096" in result.info["skipped"][0]["reason"]
    assert isinstance(result.model.features[3], nn.Linear)
    assert torch.equal(result.model.features[3].weight, model.features[3].weight)


def test_lowrank_raises_when_nothing_can_be_factorised(ctx: StageContext) -> None:
    # rank_ratio 0.9 makes every layer grow: features.1 36·104 > 40·64, features.3 58·128 > 64·64, head 9·74 > 10·64
    with pytest.raises(DistillError, match=r"no layer to factorise in MLP.*features.1: rank 36.*head: rank 9"):
        LowRank(rank_ratio=0.9).apply(mlp(), ctx)
    with pytest.raises(DistillError, match=r"min_features=8"):
        LowRank(rank_ratio=0.5).apply(nn.Sequential(nn.Linear(4, 100)), ctx)


def test_lowrank_convolutions(ctx: StageContext) -> None:
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv1d(8, 16, 5, stride=2, padding=2)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(16, 2, generator=gen) @ torch.randn(2, 40, generator=gen)).reshape(16, 8, 5))
    x = torch.randn(4, 8, 30, generator=gen)
    result = LowRank(rank_ratio=None, energy=0.9999).apply(nn.Sequential(conv), ctx)
    first, second = result.model[0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding) == (
        8,
        2,
        (5,),
        (2,),
        (2,),
    )
    assert first.bias is None
    assert (second.in_channels, second.out_channels, second.kernel_size) == (2, 16, (1,))
    assert result.info["layers"]["0"]["rank"] == 2
    assert torch.allclose(result.model(x), conv(x), atol=1e-5)

    conv2d = nn.Conv2d(8, 16, 3, padding=1)
    out = LowRank(rank_ratio=0.25).apply(nn.Sequential(conv2d), ctx)
    assert out.info["layers"]["0"]["rank"] == 4  # ceil(0.25 · min(16, 8·3·3))
    assert out.info["layers"]["0"]["relative_error"] == pytest.approx(tail_error(conv2d.weight, 4), abs=1e-5)
    assert out.model(torch.randn(2, 8, 6, 6)).shape == (2, 16, 6, 6)

    net = convnet()
    result = LowRank(rank_ratio=0.5).apply(net, ctx)
    # blocks.0.0 is 16×(1·5): 5 < min_features → skipped; blocks.1/2 are 16×80 → r = 8; head 10×160 → r = 5
    assert {name: layer["rank"] for name, layer in result.info["layers"].items()} == {
        "blocks.1.0": 8,
        "blocks.2.0": 8,
        "head.2": 5,
    }
    assert [item["layer"] for item in result.info["skipped"]] == ["blocks.0.0"]
    net.eval()
    result.model.eval()
    assert result.model(ctx.example_input).shape == (8, NUM_CLASSES)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank_ratio": 0.5, "energy": 0.9}, "exactly one"),
        ({"rank_ratio": None, "energy": None}, "exactly one"),
        ({"rank_ratio": 0.0}, "rank_ratio"),
        ({"rank_ratio": 1.5}, "rank_ratio"),
        ({"rank_ratio": None, "energy": 0.0}, "energy"),
        ({"rank_ratio": None, "energy": 1.01}, "energy"),
        ({"min_features": 0}, "min_features"),
        ({"min_features": 2.5}, "min_features"),
    ],
)
def test_lowrank_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(DistillError, match=match):
        LowRank(**kwargs)
