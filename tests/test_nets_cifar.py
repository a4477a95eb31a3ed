"""The CIFAR KD model zoo (distill.nets.cifar): shapes, published sizes, feature taps, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from distill.nets import cifar
from distill.nets.cifar import ZOO, BasicBlock, WideBasicBlock, build

# Parameters (millions) at 100 classes, from the CIFAR-100 tables of Tian et al. (CRD, ICLR 2020) and
# Zhao et al. (DKD, CVPR 2022).
PUBLISHED_M = {
    "resnet8": 0.08,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.73,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}

# the last spatial stage of each family: a 4-D map
LAST_STAGE = {"wrn": "layer3", "vgg": "layer5", "mobilenetv2": "layer4"}
STAGES = {
    "vgg": ["layer1", "layer2", "layer3", "layer4", "layer5"],
    "mobilenetv2": ["layer1", "layer2", "layer3", "layer4"],
}


def last_stage(name: str) -> str:
    return next((path for prefix, path in LAST_STAGE.items() if name.startswith(prefix)), "layer3")


def stages(name: str) -> list[str]:
    return next((paths for prefix, paths in STAGES.items() if name.startswith(prefix)), ["layer1", "layer2", "layer3"])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_zoo_holds_every_published_model() -> None:
    assert set(PUBLISHED_M) <= set(ZOO)
    for name, ctor in ZOO.items():
        assert getattr(cifar, name) is ctor  # a Hydra target: distill.nets.cifar.<name>


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_forward_backward_and_published_size(name: str) -> None:
    model = build(name)
    count = n_params(model)
    published = PUBLISHED_M[name] * 1e6
    # 3 %, or the rounding of the two-decimal published figure (resnet8: 0.0839M is printed as 0.08M)
    assert abs(count - published) <= max(0.03 * published, 0.005e6), f"{name}: {count / 1e6:.4f}M"
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 100)
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_ten_classes_change_only_the_classifier(name: str) -> None:
    hundred = {k: v.shape for k, v in build(name, num_classes=100).state_dict().items()}
    ten = {k: v.shape for k, v in build(name, num_classes=10).state_dict().items()}
    assert hundred.keys() == ten.keys()
    changed = {k for k in ten if ten[k] != hundred[k]}
    assert changed == {"fc.weight", "fc.bias"}
    assert ten["fc.weight"][0] == 10


@pytest.mark.parametrize(
    "name", ["resnet8", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"]
)
def test_single_channel_28px_input(name: str) -> None:
    model = build(name, num_classes=10, input_shape=[1, 28, 28])  # a list, as ${data.input_shape} gives
    model.eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_constructor_functions_take_the_project_signature() -> None:
    model = cifar.resnet8x4(num_classes=7, input_shape=[3, 32, 32])
    assert model.stem[0].in_channels == 3 and model.fc.out_features == 7
    assert cifar.ResNet(10, (3, 32, 32), depth=14).fc.out_features == 10


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_tap_paths_and_hook_shapes(name: str) -> None:
    model = build(name)
    modules = dict(model.named_modules())
    documented = ["pool", "fc", *stages(name)] + (["stem"] if not name.startswith("vgg") else [])
    assert all(path in modules for path in documented), sorted(set(documented) - set(modules))
    seen: dict[str, Tensor] = {}
    handles = [
        modules[p].register_forward_hook(lambda m, a, out, p=p: seen.__setitem__(p, out))
        for p in ("pool", last_stage(name))
    ]
    model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert seen["pool"].shape == (2, model.embedding_dim) == (2, model.fc.in_features)
    assert seen[last_stage(name)].dim() == 4
    if not hasattr(model, "head") or isinstance(model, cifar.WideResNet):
        assert seen[last_stage(name)].shape[1] == model.embedding_dim  # no 1x1 head conv: pool(last stage)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_hooked_outputs_are_not_altered_later(name: str) -> None:
    """What a hook captures (on any module, stage or layer) equals a clone taken at hook time after forward ends:
    no later in-place op rewrites a tensor that another module produced or received."""
    model = build(name)
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(path: str):
        def store(module: nn.Module, args: tuple, out: Tensor) -> None:
            captured[path] = (out, out.detach().clone())

        return store

    handles = [m.register_forward_hook(hook(p)) for p, m in model.named_modules() if p]
    logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()  # backward must not touch them either
    for h in handles:
        h.remove()
    assert {"pool", last_stage(name)} <= captured.keys()
    for path, (live, at_hook) in captured.items():
        assert torch.equal(live.detach(), at_hook), f"{name}: output of '{path}' was modified after its hook ran"


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 9), ("resnet56", 27), ("resnet110", 54), ("wrn_40_2", 18)])
def test_depths(name: str, blocks: int) -> None:
    model = build(name)
    kind = WideBasicBlock if name.startswith("wrn") else BasicBlock
    assert sum(isinstance(m, kind) for m in model.modules()) == blocks
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [blocks // 3] * 3


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown CIFAR model 'resnet9000'") as err:
        build("resnet9000")
    for name in ("resnet8x4", "wrn_40_2", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2"):
        assert name in str(err.value)
    assert isinstance(build("MobileNetV2", num_classes=10), cifar.MobileNetV2)


@pytest.mark.parametrize("shape", [(3, 32), [64], (1, 3, 32, 32)])
@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_non_image_input_shape_is_refused(name: str, shape) -> None:
    with pytest.raises(ValueError, match=r"input_shape \(channels, height, width\)"):
        build(name, input_shape=shape)


def test_bad_architecture_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar.ResNet(depth=21)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        cifar.WideResNet(depth=20)


def test_weight_init() -> None:
    model = build("resnet20")
    bn = model.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    conv = model.layer3[0].conv2.weight  # Kaiming normal, fan-out, ReLU gain: std = sqrt(2 / (64 * 9))
    assert abs(conv.std().item() - (2 / (64 * 9)) ** 0.5) < 0.1 * (2 / (64 * 9)) ** 0.5


def test_channels_last_matches_contiguous() -> None:
    model = build("shufflenetv2").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
