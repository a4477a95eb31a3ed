"""Deployment stages: ONNX export checked against PyTorch at two batch sizes, export failures named,
int8 quantisation (dynamic and static) checked for size and accuracy on a trained model, and the ONNX
measuring helpers checked against their PyTorch counterparts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from distill.compress.base import StageContext
from distill.compress.deploy import (
    Int8Quantize,
    OnnxExport,
    onnx_latency_ms,
    onnx_nonzero_parameters,
    onnx_parameters,
    onnx_predict,
    onnx_session,
)
from distill.errors import DistillError
from distill.measure import count_parameters, predict
from distill.nets import MLP, ConvNet1d


def make_ctx(tmp_path, seed: int = 0) -> StageContext:
    g = torch.Generator().manual_seed(seed)
    return StageContext(
        example_input=torch.randn(16, 40, generator=g),
        calibration=[torch.randn(64, 40, generator=g) for _ in range(4)],
        out_dir=tmp_path,
        num_classes=10,
    )


def ort_logits(path, x: Tensor) -> np.ndarray:
    return onnx_session(path).run(None, {"input": x.numpy()})[0]


def state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- a trained MLP, so that quantisation error shows in accuracy -----------------------------------

MAP = torch.randn(40, 10, generator=torch.Generator().manual_seed(123))


def task(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """y = argmax(x · MAP) for standard normal x: learnable by an MLP, and not by chance (10 classes)."""
    x = torch.randn(n, 40, generator=torch.Generator().manual_seed(seed))
    return x, (x @ MAP).argmax(-1)


@pytest.fixture(scope="module")
def trained_mlp() -> MLP:
    torch.manual_seed(0)
    model = MLP((40,), 10, hidden=(256, 256))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = task(200 * 64, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is several times faster on a busy machine
    try:
        for step in range(200):
            xb, yb = x[step * 64 : (step + 1) * 64], y[step * 64 : (step + 1) * 64]
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(logits: np.ndarray | Tensor, y: Tensor) -> float:
    return float((torch.as_tensor(logits).argmax(-1) == y).float().mean())


# -- OnnxExport -------------------------------------------------------------------------------------


def test_export_mlp_matches_pytorch_at_batch_1_and_37(tmp_path):
    torch.manual_seed(0)
    model = MLP((40,), 10, hidden=(64, 64))
    result = OnnxExport(atol=1e-5).apply(model, make_ctx(tmp_path))
    assert result.artifact == tmp_path / "model.onnx"
    assert result.artifact.is_file()
    assert result.info["opset"] == 17
    assert 0.0 <= result.info["max_abs_diff"] <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left behind
    graph = onnx.load(str(result.artifact)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for n in (1, 37):
        x = torch.randn(n, 40)
        got = ort_logits(result.artifact, x)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=0, atol=1e-5)


def test_export_convnet_with_batchnorm_in_eval(tmp_path):
    torch.manual_seed(0)
    model = ConvNet1d((40,), 10, channels=(16, 16, 16))
    model.train()
    for _ in range(3):  # non-trivial running statistics, so that train-mode BatchNorm would differ
        model(torch.randn(32, 40) * 3 + 1)
    before = state_copy(model)
    result = OnnxExport(atol=1e-5).apply(model, make_ctx(tmp_path))
    assert model.training  # left in its original mode
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats not updated by the export
    x = torch.randn(37, 40)
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(ort_logits(result.artifact, x), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ort_logits(result.artifact, x[:1]), expected[:1], rtol=0, atol=1e-5)


def test_export_leaves_the_model_in_eval_mode_unchanged(tmp_path):
    model = MLP((40,), 10, hidden=(64, 64), dropout=0.5).eval()
    before = state_copy(model)
    OnnxExport().apply(model, make_ctx(tmp_path))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_with_dropout_in_train_mode_uses_eval_copy(tmp_path):
    """Dropout 0.5 in train mode would make parity impossible; the stage must export the eval copy."""
    model = MLP((40,), 10, hidden=(64, 64), dropout=0.5).train()
    result = OnnxExport(atol=1e-5).apply(model, make_ctx(tmp_path))
    assert model.training
    assert result.info["max_abs_diff"] <= 1e-5


class Eigenvalues(nn.Module):
    """Uses torch.linalg.eig, which the TorchScript ONNX exporter has no symbolic for."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(40, 25)

    def forward(self, x: Tensor) -> Tensor:
        return torch.linalg.eig(self.proj(x).reshape(-1, 5, 5)).eigenvalues.real


def test_export_unsupported_op_names_it(tmp_path):
    with pytest.raises(DistillError, match=r"Eigenvalues.*aten::linalg_eig") as info:
        OnnxExport().apply(Eigenvalues(), make_ctx(tmp_path))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither model.onnx nor a temporary file


class DataDependent(nn.Module):
    """A Python branch on a value: the tracer records only the branch taken for the export input."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(40, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(x)
        return y * 10 if bool(x.sum() > 0) else y


def test_export_parity_failure_reports_the_difference(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.example_input[:2] = 1.0  # the export traces rows 0-1 (sum > 0): the ×10 branch is baked in …
    ctx.example_input[2:] = -1.0  # … but the full batch sums < 0, so PyTorch takes the plain branch
    with pytest.raises(
        DistillError, match=r"differs from PyTorch by \d.*beyond atol 0.0001 \+ rtol 0.0001.*tracer warnings"
    ):
        OnnxExport().apply(DataDependent(), ctx)
    assert list(tmp_path.iterdir()) == []  # a model that fails the check is not left behind


@pytest.mark.parametrize(
    "kwargs, match",
    [({"opset": 3}, "opset"), ({"opset": "17"}, "opset"), ({"atol": 0}, "atol"), ({"atol": -1.0}, "atol")],
)
def test_export_bad_hyper_parameters(kwargs, match):
    with pytest.raises(DistillError, match=match):
        OnnxExport(**kwargs)


# -- Int8Quantize -----------------------------------------------------------------------------------


def quant_ctx(tmp_path) -> StageContext:
    x, _ = task(16, seed=2)
    return StageContext(
        example_input=x,
        calibration=[task(64, seed=10 + i)[0] for i in range(4)],
        out_dir=tmp_path,
        num_classes=10,
    )


@pytest.mark.parametrize(
    "mode, per_channel", [("dynamic", False), ("dynamic", True), ("static", False), ("static", True)]
)
def test_int8_smaller_and_as_accurate(tmp_path, trained_mlp, mode, per_channel):
    ctx = quant_ctx(tmp_path)
    fp32 = OnnxExport().apply(trained_mlp, ctx).artifact
    result = Int8Quantize(mode=mode, per_channel=per_channel).apply(fp32, ctx)
    assert result.artifact == tmp_path / "model.int8.onnx"
    assert result.info["mode"] == mode and result.info["per_channel"] is per_channel
    assert result.info["bytes_fp32"] == fp32.stat().st_size
    assert result.info["bytes_int8"] == result.artifact.stat().st_size
    assert result.info["bytes_int8"] < 0.5 * result.info["bytes_fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
    ops = {n.op_type for n in onnx.load(str(result.artifact)).graph.node}
    assert ("MatMulInteger" if mode == "dynamic" else "DequantizeLinear") in ops

    x, y = task(512, seed=99)  # same distribution as the calibration data
    logits32, logits8 = ort_logits(fp32, x), ort_logits(result.artifact, x)
    acc32, acc8 = accuracy(logits32, y), accuracy(logits8, y)
    assert acc32 > 0.7  # the training worked, so the comparison means something
    assert abs(acc8 - acc32) <= 0.02
    assert accuracy(logits8, torch.as_tensor(logits32).argmax(-1)) >= 0.95


def test_int8_takes_a_module_and_exports_it_first(tmp_path):
    torch.manual_seed(0)
    model = MLP((40,), 10, hidden=(64, 64))
    result = Int8Quantize().apply(model, make_ctx(tmp_path))
    assert (tmp_path / "model.onnx").is_file() and result.artifact.is_file()
    x = torch.randn(8, 40)
    assert ort_logits(result.artifact, x).shape == (8, 10)


def test_int8_static_uses_at_most_calibration_batches(tmp_path):
    seen = []

    def batches():
        for i in range(100):
            seen.append(i)
            yield torch.randn(64, 40)

    torch.manual_seed(0)
    ctx = make_ctx(tmp_path)
    ctx.calibration = batches()
    Int8Quantize(mode="static", calibration_batches=3).apply(MLP((40,), 10, hidden=(64, 64)), ctx)
    assert seen == [0, 1, 2]


def test_int8_static_without_calibration_data(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.calibration = []
    with pytest.raises(DistillError, match="calibration"):
        Int8Quantize(mode="static").apply(MLP((40,), 10, hidden=(64, 64)), ctx)
    assert not (tmp_path / "model.int8.onnx").exists()


def test_int8_missing_file(tmp_path):
    with pytest.raises(DistillError, match="no ONNX model"):
        Int8Quantize().apply(tmp_path / "absent.onnx", make_ctx(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "fp16"}, "unknown mode 'fp16'; valid modes: dynamic, static"),
        ({"per_channel": 1}, "per_channel"),
        ({"calibration_batches": 0}, "calibration_batches"),
        ({"activations": "int4"}, "activations"),
    ],
)
def test_int8_bad_hyper_parameters(kwargs, match):
    with pytest.raises(DistillError, match=match):
        Int8Quantize(**kwargs)


# -- measuring helpers ------------------------------------------------------------------------------


def test_onnx_parameters_equal_pytorch_count_for_mlp(tmp_path):
    model = MLP((40,), 10, hidden=(64, 64))
    path = OnnxExport().apply(model, make_ctx(tmp_path)).artifact
    expected = 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert count_parameters(model) == expected
    assert onnx_parameters(path) == expected
    assert onnx_nonzero_parameters(path) == expected  # random init: no exact zeros


def test_onnx_nonzero_parameters_counts_pruned_weights(tmp_path):
    model = MLP((40,), 10, hidden=(64, 64))
    with torch.no_grad():
        model.features[1].weight[:, :10] = 0  # 64 × 10 zeros
    path = OnnxExport().apply(model, make_ctx(tmp_path)).artifact
    assert onnx_parameters(path) - onnx_nonzero_parameters(path) == 640


def test_onnx_predict_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = ConvNet1d((40,), 10, channels=(16, 16, 16)).eval()
    path = OnnxExport().apply(model, make_ctx(tmp_path)).artifact
    batches = [{"x": torch.randn(n, 40), "y": torch.randint(0, 10, (n,))} for n in (5, 32, 1)]
    logits, targets = onnx_predict(path, batches)
    ref_logits, ref_targets = predict(model, batches)
    assert logits.shape == (38, 10) and logits.dtype == torch.float32
    assert torch.equal(targets, ref_targets)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    session = onnx_session(path)  # a session works as well as a path
    torch.testing.assert_close(onnx_predict(session, batches)[0], logits, rtol=0, atol=0)


def test_onnx_latency_positive(tmp_path):
    path = OnnxExport().apply(MLP((40,), 10, hidden=(64, 64)), make_ctx(tmp_path)).artifact
    ms = onnx_latency_ms(path, torch.randn(4, 40), batch_size=8, repeats=5, warmup=1)
    assert 0 < ms < 1000


def test_onnx_session_missing_or_broken_file(tmp_path):
    with pytest.raises(DistillError, match="no ONNX model"):
        onnx_session(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DistillError, match="cannot load"):
        onnx_session(broken)
