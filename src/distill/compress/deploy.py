"""Deployment stages: export to ONNX (with a parity check) and 8-bit quantisation with ONNX Runtime,
plus measuring helpers that treat an ONNX file the way `distill.measure` treats a PyTorch model."""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.atomic import remove_stale_temporaries, temporary_name
from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError

if TYPE_CHECKING:
    import onnxruntime

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
QUANT_MODES = ("dynamic", "static")
ACTIVATION_TYPES = ("uint8", "int8")


def _require(module: str) -> Any:
    """Import an optional ONNX package, or explain in one line which one to install."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise DistillError(f"the deployment stages need the {module!r} package: pip install {module}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _atomic_target(out_dir: Path, suffix: str) -> Path:
    """A fresh temporary file next to the final artifact, so that `os.replace` is atomic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    path = temporary_name(out_dir / f"artifact{suffix}")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask's permissions, as open() gives
    return path


def _is_legacy_exporter_notice(w: warnings.WarningMessage) -> bool:
    """torch ≥ 2.9 warns on every `dynamo=False` export; that is a choice here, not news to the user."""
    text = str(w.message)
    return issubclass(w.category, DeprecationWarning) and (
        "legacy TorchScript-based ONNX export" in text or "The feature will be removed" in text
    )


# -- export -----------------------------------------------------------------------------------------


class OnnxExport:
    """Export a PyTorch model to `out_dir/model.onnx` (dynamic batch axis) and check it against PyTorch.

    Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) on an eval-mode deep copy; the
    model passed in is left as it was. The ONNX Runtime outputs on `ctx.example_input` at batch size 1 and at
    the full batch must match PyTorch within `atol + rtol * |PyTorch's output|` (as `numpy.allclose`):
    deep convolutional networks reorder float sums enough to move large logits by more than 1e-4.
    """

    filename = "model.onnx"

    def __init__(self, opset: int = 17, atol: float = 1e-4, rtol: float = 1e-4) -> None:
        if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= 20:
            raise DistillError(f"OnnxExport: opset must be an integer in [9, 20], got {opset!r}")
        if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol > 0:
            raise DistillError(f"OnnxExport: atol must be a positive number, got {atol!r}")
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
            raise DistillError(f"OnnxExport: rtol must be a non-negative number, got {rtol!r}")
        self.opset = opset
        self.atol, self.rtol = float(atol), float(rtol)

    def _parity(self, model: nn.Module, path: Path, example: Tensor, name: str, tracer_warnings: list[str]) -> float:
        """Largest |ONNX Runtime − PyTorch| over the example inputs at batch size 1 and at the full batch."""
        session = onnx_session(path)
        max_diff, within = 0.0, True
        sizes = sorted({1, len(example)})
        for size in sizes:
            x = example[:size]
            with torch.no_grad():
                expected = model(x).float().numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != expected.shape:
                raise DistillError(
                    f"ONNX export of {name}: output shape {got.shape} differs from PyTorch's {expected.shape} "
                    f"at batch size {size}"
                )
            max_diff = max(max_diff, float(np.abs(got - expected).max()))
            within = within and bool(np.allclose(got, expected, rtol=self.rtol, atol=self.atol))
        if not within:
            hint = f" (tracer warnings: {'; '.join(tracer_warnings)})" if tracer_warnings else ""
            raise DistillError(
                f"ONNX export of {name}: ONNX Runtime differs from PyTorch by {max_diff:.3g}, beyond atol {self.atol:g} "
                f"+ rtol {self.rtol:g} x |output| at batch sizes {sizes}{hint}"
            )
        return max_diff

    def apply(self, model_or_path: nn.Module | Path | str, ctx: StageContext) -> StageResult:
        if not isinstance(model_or_path, nn.Module):
            raise DistillError(f"OnnxExport takes a PyTorch model, got {type(model_or_path).__name__}")
        _require("onnx")
        _require("onnxruntime")
        example = ctx.example_input.detach().cpu()
        if example.ndim < 1 or len(example) == 0:
            raise DistillError("OnnxExport needs at least one example input in ctx.example_input")
        model = copy.deepcopy(model_or_path).cpu().eval()
        name = type(model_or_path).__name__
        path = Path(ctx.out_dir) / self.filename
        tmp = _atomic_target(Path(ctx.out_dir), ".onnx")
        tracer_warnings: list[str] = []
        try:
            with warnings.catch_warnings(record=True) as caught, torch.no_grad():
                warnings.simplefilter("always")
                torch.onnx.export(
                    model,
                    (example[: min(2, len(example))],),
                    str(tmp),
                    dynamo=False,
                    opset_version=self.opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                )
            for w in caught:
                if issubclass(w.category, torch.jit.TracerWarning):
                    tracer_warnings.append(_first_line(w.message))  # type: ignore[arg-type]
                elif not _is_legacy_exporter_notice(w):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise DistillError(f"ONNX export of {name} (opset {self.opset}) failed: {_first_line(err)}") from err
        try:
            max_diff = self._parity(model, tmp, example, name, tracer_warnings)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return StageResult(artifact=path, info={"max_abs_diff": max_diff, "opset": self.opset})


# -- quantisation -----------------------------------------------------------------------------------


class _BatchReader:
    """An ONNX Runtime `CalibrationDataReader` over a fixed list of input batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


class Int8Quantize:
    """Quantise an ONNX model to 8 bits with ONNX Runtime, writing `out_dir/model.int8.onnx`.

    `mode="dynamic"`: int8 weights, activations quantised on the fly (`quantize_dynamic`).
    `mode="static"`: QDQ format, int8 weights and `activations` ("uint8" or "int8") whose ranges come from up
    to `calibration_batches` batches of `ctx.calibration` (`quantize_static`, min-max calibration).
    Both run ONNX Runtime's `quant_pre_process` (shape inference + optimisation) first, as its docs advise.
    An `nn.Module` input is exported with `OnnxExport()` first.
    """

    filename = "model.int8.onnx"

    def __init__(
        self,
        mode: str = "dynamic",
        per_channel: bool = False,
        calibration_batches: int = 8,
        activations: str = "uint8",
        reduce_range: bool = False,
    ) -> None:
        if mode not in QUANT_MODES:
            raise DistillError(f"Int8Quantize: unknown mode {mode!r}; valid modes: {', '.join(QUANT_MODES)}")
        if not isinstance(per_channel, bool):
            raise DistillError(f"Int8Quantize: per_channel must be true or false, got {per_channel!r}")
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise DistillError(
                f"Int8Quantize: calibration_batches must be a positive integer, got {calibration_batches!r}"
            )
        if activations not in ACTIVATION_TYPES:
            raise DistillError(
                f"Int8Quantize: unknown activations {activations!r}; valid: {', '.join(ACTIVATION_TYPES)}"
            )
        if not isinstance(reduce_range, bool):
            raise DistillError(f"Int8Quantize: reduce_range must be true or false, got {reduce_range!r}")
        self.mode = mode
        self.per_channel = per_channel
        self.calibration_batches = calibration_batches
        self.activations = activations
        self.reduce_range = reduce_range

    def _calibration_reader(self, source: Path, ctx: StageContext) -> _BatchReader:
        onnx = _require("onnx")
        input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
        batches: list[np.ndarray] = []
        for batch in ctx.calibration:
            x = batch["x"] if isinstance(batch, dict) else batch
            batches.append(torch.as_tensor(x).detach().cpu().float().numpy())
            if len(batches) >= self.calibration_batches:
                break
        if not batches:
            raise DistillError("Int8Quantize(mode=static) needs calibration batches, but ctx.calibration is empty")
        return _BatchReader(input_name, batches)

    def apply(self, model_or_path: nn.Module | Path | str, ctx: StageContext) -> StageResult:
        if isinstance(model_or_path, nn.Module):
            model_or_path = OnnxExport().apply(model_or_path, ctx).artifact
        source = Path(model_or_path)
        if not source.is_file():
            raise DistillError(f"Int8Quantize: no ONNX model at {source}")
        _require("onnx")
        quantization = _require("onnxruntime.quantization")
        out_dir = Path(ctx.out_dir)
        path = out_dir / self.filename
        tmp = _atomic_target(out_dir, ".onnx")
        try:
            with tempfile.TemporaryDirectory() as scratch:
                prepared = Path(scratch) / "prepared.onnx"
                quantization.quant_pre_process(str(source), str(prepared))
                if self.mode == "dynamic":
                    quantization.quantize_dynamic(
                        str(prepared),
                        str(tmp),
                        per_channel=self.per_channel,
                        reduce_range=self.reduce_range,
                        weight_type=quantization.QuantType.QInt8,
                    )
                else:
                    activation_type = {"uint8": quantization.QuantType.QUInt8, "int8": quantization.QuantType.QInt8}
                    quantization.quantize_static(
                        str(prepared),
                        str(tmp),
                        self._calibration_reader(source, ctx),
                        quant_format=quantization.QuantFormat.QDQ,
                        per_channel=self.per_channel,
                        reduce_range=self.reduce_range,
                        activation_type=activation_type[self.activations],
                        weight_type=quantization.QuantType.QInt8,
                        calibrate_method=quantization.CalibrationMethod.MinMax,
                    )
            os.replace(tmp, path)
        except DistillError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise DistillError(f"Int8Quantize({self.mode}) of {source.name} failed: {_first_line(err)}") from err
        info = {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "bytes_fp32": source.stat().st_size,
            "bytes_int8": path.stat().st_size,
        }
        return StageResult(artifact=path, info=info)


# -- measuring ONNX artifacts -----------------------------------------------------------------------


def onnx_session(path: Path | str) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU (thread counts left to ONNX Runtime's defaults)."""
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"no ONNX model at {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise DistillError(f"ONNX Runtime cannot load {path}: {_first_line(err)}") from err


def _as_session(path_or_session: Path | str | onnxruntime.InferenceSession) -> onnxruntime.InferenceSession:
    return onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session


def _feed(x: Tensor) -> np.ndarray:
    """A model input as ONNX Runtime takes it: float32 for real-valued inputs, integers (token ids) as they are."""
    x = x.detach().cpu()
    return (x.float() if x.is_floating_point() else x).contiguous().numpy()


def onnx_sample_shape(path_or_session: Path | str | onnxruntime.InferenceSession) -> list[int | str]:
    """The sample shape an ONNX model takes: its first input's axes after the batch axis (a named axis as its name)."""
    dims = _as_session(path_or_session).get_inputs()[0].shape
    return [d if isinstance(d, int) else str(d) for d in dims[1:]]


def check_onnx_input_shape(
    path_or_session: Path | str | onnxruntime.InferenceSession, sample_shape: Iterable[int], data: str, name: str = ""
) -> None:
    """Refuse `data` when its samples (of `sample_shape`) do not fit the ONNX model's input, naming both shapes."""
    expected, got = onnx_sample_shape(path_or_session), [int(d) for d in sample_shape]
    fits = len(expected) == len(got) and all(
        not isinstance(e, int) or e == g for e, g in zip(expected, got, strict=True)
    )
    if not fits:
        what = f"ONNX model {name}" if name else "the ONNX model"
        raise DistillError(f"{what} takes samples of shape {expected} but {data} has samples of shape {got}")


def onnx_run(session: onnxruntime.InferenceSession, x: Tensor) -> np.ndarray:
    """The first output of the session's model for the input `x`."""
    return session.run(None, {session.get_inputs()[0].name: _feed(x)})[0]


def onnx_predict(
    path_or_session: Path | str | onnxruntime.InferenceSession, batches: Iterable[dict[str, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Logits and targets of an ONNX model over every batch (`{"x", "y"}` dicts), like `measure.predict`."""
    session = _as_session(path_or_session)
    logits, targets = [], []
    for batch in batches:
        logits.append(torch.from_numpy(np.ascontiguousarray(onnx_run(session, batch["x"]))).float())
        targets.append(batch["y"])
    return torch.cat(logits), torch.cat(targets)


def onnx_latency_ms(
    path_or_session: Path | str | onnxruntime.InferenceSession,
    example: Tensor,
    batch_size: int,
    repeats: int = 30,
    warmup: int = 5,
) -> float:
    """Median wall time of one ONNX Runtime forward pass on the CPU at `batch_size`, in milliseconds."""
    session = _as_session(path_or_session)
    name = session.get_inputs()[0].name
    x = _feed(example[:1].expand(batch_size, *example.shape[1:]))
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _initializers(path: Path | str) -> list[np.ndarray]:
    """The model's initializers, less the input standardisation's statistics (buffers in PyTorch, not parameters)."""
    from distill.data.base import STANDARDIZE_BUFFERS

    onnx = _require("onnx")
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"no ONNX model at {path}")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return [numpy_helper.to_array(t) for t in graph.initializer if t.name not in STANDARDIZE_BUFFERS]


def onnx_parameters(path: Path | str) -> int:
    """Number of elements over all initializers (weights; in a quantised model also scales and zero points)."""
    return sum(int(a.size) for a in _initializers(path))


def onnx_nonzero_parameters(path: Path | str) -> int:
    """Number of non-zero elements over all initializers."""
    return sum(int(np.count_nonzero(a)) for a in _initializers(path))
