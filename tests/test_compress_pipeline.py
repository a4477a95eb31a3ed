"""Compression stages inside the main job: order, measurement of every stage, failures kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import compose_config, tiny_job

from distill.spine import run

pytestmark = pytest.mark.slow  # every test runs the main job


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("compress")
    overrides = tiny_job(tmp, "student=mlp", "compress=[prune,recover,onnx,int8]", "compress.recover.epochs=3")
    return tmp, run(compose_config(overrides))


def test_every_stage_is_measured_in_order(compressed) -> None:
    _, report = compressed
    names = [r["model"] for r in report["models"]]
    assert names[-4:] == ["compress:prune", "compress:recover", "compress:onnx", "compress:int8"]
    rows = {r["model"]: r for r in report["models"]}
    student, pruned, recovered = rows["student"], rows["compress:prune"], rows["compress:recover"]
    weights = 64 * 100 + 100 * 100 + 100 * 10
    assert pruned["parameters"] == student["parameters"]
    assert student["parameters"] - pruned["nonzero_parameters"] == pytest.approx(weights / 2, abs=2)
    assert pruned["stage"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert recovered["nonzero_parameters"] == pruned["nonzero_parameters"]  # recovery keeps the pruned zeros
    assert recovered["stage"]["zeros_after"] == recovered["stage"]["zeros_before"]
    assert rows["compress:onnx"]["accuracy"] == pytest.approx(recovered["accuracy"], abs=1e-9)  # parity
    assert rows["compress:onnx"]["stage"]["max_abs_diff"] < 1e-4
    assert rows["compress:int8"]["bytes"] < 0.5 * rows["compress:onnx"]["bytes"]
    assert abs(rows["compress:int8"]["accuracy"] - rows["compress:onnx"]["accuracy"]) <= 0.03
    for name in ("compress:onnx", "compress:int8"):
        assert rows[name]["flops"] is None and Path(rows[name]["artifact"]).is_file()
        assert rows[name]["latency_ms_batch_1"] > 0


def test_the_report_files_and_the_logger_hold_the_stages(compressed) -> None:
    tmp, _ = compressed
    on_disk = json.loads((tmp / "run" / "report.json").read_text())
    assert "failed" not in on_disk
    assert "| compress:int8 |" in (tmp / "run" / "report.md").read_text()
    logged = (tmp / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "report/compress:prune/stage/sparsity",
        "report/compress:onnx/stage/max_abs_diff",
        "report/compress:int8/bytes",
    ):
        assert column in logged


def test_structured_pruning_shrinks_the_student(tmp_path: Path) -> None:
    report = run(compose_config(tiny_job(tmp_path, "student=mlp", "compress=[prune_structured]")))
    rows = {r["model"]: r for r in report["models"]}
    assert rows["compress:prune_structured"]["parameters"] < 0.45 * rows["student"]["parameters"]
    assert rows["compress:prune_structured"]["flops"] < 0.45 * rows["student"]["flops"]


def test_a_failing_stage_stops_compression_and_keeps_earlier_results(tmp_path: Path) -> None:
    report = run(compose_config(tiny_job(tmp_path, "compress=[prune,onnx,recover]")))
    assert [r["model"] for r in report["models"]][-2:] == ["compress:prune", "compress:onnx"]
    assert report["failed"]["stage"] == "recover"
    assert "recover trains a PyTorch model" in report["failed"]["error"]
    assert "compression stopped: stage 'recover' failed" in (tmp_path / "run" / "report.md").read_text()


def test_distill_eval_runs_an_exported_onnx_artifact(compressed) -> None:
    from tests.conftest import run_cli

    tmp, report = compressed
    int8 = next(r for r in report["models"] if r["model"] == "compress:int8")
    args = [
        f"ckpt_path={int8['artifact']}",
        "data=digits",
        f"paths.output_dir={tmp}/eval_onnx",
        "report.latency_repeats=2",
    ]
    result = run_cli(args, cwd=tmp, module="distill.eval")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads((tmp / "eval_onnx" / "report.json").read_text())["models"][0]
    assert evaluated["accuracy"] == pytest.approx(int8["accuracy"], abs=1e-9)
    missing = run_cli(
        [f"ckpt_path={int8['artifact']}", f"paths.output_dir={tmp}/eval2"], cwd=tmp, module="distill.eval"
    )
    assert missing.returncode == 2 and "carries no data config" in missing.stderr
