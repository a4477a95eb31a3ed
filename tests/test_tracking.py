"""W&B, TensorBoard and CSV runs people can read: run names and tags, one x-axis per stage (also for a
teacher reused from the cache), the report as a table, text, images and TensorBoard hparams, and a
quiet console."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml
from tests.builders import quiet_trainer
from tests.conftest import REPO, cli_job, compose_config, run_cli, tiny_job

from distill import assembly
from distill.tracking import StageAxis, log_history, run_name, run_tags

# -- reading runs back --------------------------------------------------------------------------


def wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run's `run-*.wandb` file (a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header, pos, chunk, records = 32768, 7, 7, b"", []
    while pos + header <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header]) if left >= header else (0, 0, 0)
        if left < header or (kind == 0 and length == 0):
            pos += left  # the rest of a block is padding
            continue
        piece = data[pos + header : pos + header + length]
        pos += header + length
        chunk = piece if kind in (1, 2) else chunk + piece  # full, first | middle, last
        if kind in (1, 4):
            records.append(pb.Record.FromString(chunk))
    return records


def wandb_run(run_dir: Path) -> dict:
    """An offline W&B run's name, tags, metric definitions and history rows."""
    out: dict = {"metrics": {}, "history": []}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["tags"] = record.run.display_name, list(record.run.tags)
        elif kind == "metric":
            out["metrics"][record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
    return out


def epochs_of(run: dict, stage: str, metric: str) -> list[int]:
    """The `<stage>/epoch` of each W&B row that holds `<stage>/<metric>`."""
    return [int(row[f"{stage}/epoch"]) for row in run["history"] if f"{stage}/{metric}" in row]


def tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def wandb_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("wandb:")]


def console_env() -> dict[str, str]:
    """A command line's environment as a user has it: W&B offline, but not told to be silent."""
    from tests.conftest import cli_env

    env = cli_env(WANDB_MODE="offline")
    env.pop("WANDB_SILENT", None)
    return env


SHORT = ["teacher.mlp_large.fit.epochs=2", "student.fit.epochs=2", "student.baseline.epochs=2"]


# -- run names and tags -------------------------------------------------------------------------


def test_run_name_is_what_sets_the_run_apart() -> None:
    overrides = ["experiment=mnist1d_kd", "distill.kd.temperature=8", "student=resnet8", "paths.log_dir=/x/logs"]
    assert run_name(overrides, "train") == "mnist1d_kd T=8 student=resnet8"
    assert run_name([], "train") == "train"
    assert run_name(["student.fit.epochs=8", "report.latency_repeats=3", "student.fit.epochs=2"], "t") == "epochs=2"
    assert run_name(["logger=many", "hydra.verbose=true", "callbacks.progress_bar.refresh_rate=0"], "lm") == "lm"
    assert run_name(["data.data_dir='~/data'", "teacher.cnn.ckpt_path=runs/a/teacher.ckpt"], "train") == "train"
    # The same last key twice: each keeps as many components as tell it apart.
    epochs = ["student.fit.epochs=2", "teacher.cnn.fit.epochs=3", "student.baseline.epochs=4"]
    assert run_name(epochs, "train") == "student.fit.epochs=2 cnn.fit.epochs=3 baseline.epochs=4"
    values = ["teacher=[cnn,cnn_small]", "distill.kd.weight=0.7312345", "+teacher.cnn.net.hidden=[128]"]
    assert run_name(values, "train") == "teacher=cnn,cnn_small weight=0.7312 hidden=128"
    assert run_name(["teacher.cnn.net._target_=distill.nets.MLP", "~teacher.cnn.net.channels"], "t") == (
        "net=MLP ~channels"
    )
    assert len(run_name([f"distill.kd.key{i}=1" for i in range(100)], "train")) <= 128


def test_a_sweep_job_is_named_by_its_swept_values() -> None:
    overrides = ["experiment=digits_kd", "data=digits", "student.fit.epochs=4", "distill.kd.temperature=2.5"]
    swept = {"student.fit.epochs", "distill.kd.temperature"}
    assert run_name(overrides, "digits_kd", swept) == "digits_kd epochs=4 T=2.5"


def test_tags_name_data_models_terms_and_stages(tmp_path: Path) -> None:
    cfg = compose_config(tiny_job(tmp_path, "teacher=[mlp_large,cnn]", "compress=[prune,recover]"))
    tags = run_tags(cfg)
    assert {"teacher:mlp_large", "teacher:cnn", "distill:hard", "distill:kd", "compress:prune"} <= set(tags)
    assert any(t.startswith("data:") for t in tags) and any(t.startswith("student:") for t in tags)
    assert any(t.startswith("multi_teacher:") for t in tags)  # two teachers: how they combine
    assert all(len(t) <= 64 for t in tags)


def test_the_wandb_logger_gets_name_tags_and_quiet_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = ["distill.kd.temperature=8", "paths.log_dir=/x", "+callbacks.up.api_key=abcdefgh12345678"]
    monkeypatch.setattr(assembly, "command_overrides", lambda: overrides)
    (logger,) = assembly.build_loggers(compose_config(tiny_job(tmp_path, "logger=wandb", "logger.wandb.tags=[mine]")))
    init = logger._wandb_init
    assert init["name"] == "T=8"
    assert init["tags"][0] == "mine" and "teacher:mlp_large" in init["tags"]
    assert "anonymous" not in init  # W&B warns about the setting, whatever its value
    assert init["settings"].silent and init["settings"].console == "off"
    logger.experiment.finish()
    (named,) = assembly.build_loggers(compose_config(tiny_job(tmp_path, "logger=wandb", "logger.wandb.name=mine")))
    assert named._wandb_init["name"] == "mine"  # a name set by the user wins
    named.experiment.finish()


# -- one x-axis per stage, without W&B ------------------------------------------------------------


class _Tiny:
    """A one-parameter module that logs a validation and a training metric per epoch under `stage/`."""

    @staticmethod
    def make(stage: str):
        import lightning as L
        import torch

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))

            def training_step(self, batch, batch_idx):
                loss = (self.w * batch[0]).pow(2).mean()
                self.log(f"{stage}/train/loss", loss, on_step=False, on_epoch=True)
                return loss

            def validation_step(self, batch, batch_idx):
                self.log(f"{stage}/val/acc", self.w.detach().abs().mean())

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 1)), batch_size=4)
        return Module(), data


def test_every_stage_has_its_epoch_column_in_csv(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version="")
    for stage, epochs in (("teacher", 3), ("student", 2)):  # two Trainers, one logger: steps restart
        module, data = _Tiny.make(stage)
        quiet_trainer(max_epochs=epochs, logger=logger, callbacks=[StageAxis(stage)]).fit(module, data, data)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for stage, epochs in (("teacher", 3), ("student", 2)):
        for metric in ("val/acc", "train/loss"):
            got = [float(r[f"{stage}/epoch"]) for r in rows if r.get(f"{stage}/{metric}")]
            assert got == list(range(epochs)), (stage, metric)


def test_a_stored_history_is_logged_against_its_stage_epochs(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    rows = [{"epoch": k, "train/loss": 1.0 / (k + 1), "val/acc": 0.5 + k / 10} for k in range(3)]
    log_history([logger], "teacher_cnn", rows)
    logger.finalize("success")
    events = tensorboard(tmp_path / "tb")
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("teacher_cnn/val/acc")] == [
        (0, 0.5),
        (1, 0.6),
        (2, 0.7),
    ]
    assert [e.value for e in events.Scalars("teacher_cnn/epoch")] == [0, 1, 2]


# -- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, str]:
    """One `logger=wandb` run (it trains and caches the teacher); its folder and console."""
    tmp = tmp_path_factory.mktemp("tracking")
    args = cli_job(tmp, "logger=wandb", "distill.kd.temperature=8", *SHORT)
    result = run_cli(args, tmp, env=console_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp / "logs" / "train" / "runs").iterdir()
    return run, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sweep(single: tuple[Path, str]) -> tuple[list[Path], str]:
    """A two-job sweep with every logger, beside `single`: both jobs reuse its cached teacher."""
    tmp = single[0].parents[3]
    args = ["-m", *cli_job(tmp, "logger=many", "distill.kd.temperature=2,4", *SHORT)]
    result = run_cli(args, tmp, timeout=600, env=console_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())
    return jobs, result.stdout + result.stderr


@pytest.mark.slow
def test_the_wandb_run_is_named_tagged_and_has_one_axis_per_stage(single: tuple[Path, str]) -> None:
    run_dir, _ = single
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run = wandb_run(offline)
    assert run["name"].startswith("data=digits teacher=mlp_large student=mlp_small") and "T=8" in run["name"]
    assert not any(word in run["name"] for word in ("paths", "logger", "refresh_rate", "/"))
    assert {"data:digits", "teacher:mlp_large", "student:mlp_small", "distill:kd"} <= set(run["tags"])
    for stage, metric in (("teacher_mlp_large", "val/acc"), ("baseline", "train/loss"), ("student", "val/acc")):
        assert run["metrics"][f"{stage}/*"].step_metric == f"{stage}/epoch"
        assert run["metrics"][f"{stage}/{metric}"].step_metric == f"{stage}/epoch"
        assert epochs_of(run, stage, metric) == [0, 1]  # each stage's own epochs, not a shared counter
    table = json.loads(next(offline.rglob("report_table_*.table.json")).read_text())
    assert [row[0] for row in table["data"]] == ["teacher:mlp_large", "baseline", "student"]
    assert any("report_table/_type" in row for row in run["history"])
    assert any("plots/report/_type" in row for row in run["history"])
    assert not any("report/_type" in row for row in run["history"])  # no table under the report/* scalars
    assert (offline / "files" / "train.log").is_file()


@pytest.mark.slow
def test_the_console_shows_one_line_of_wandb(single: tuple[Path, str]) -> None:
    run_dir, console = single
    assert len(wandb_lines(console)) <= 2, wandb_lines(console)
    assert "anonymous" not in console
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"W&B: logged offline to {offline}; upload with: wandb sync {offline}" in console


@pytest.mark.slow
def test_sweep_jobs_are_named_by_their_swept_values(sweep: tuple[list[Path], str]) -> None:
    jobs, console = sweep
    names = [wandb_run(next((job / "wandb").glob("offline-run-*")))["name"] for job in jobs]
    assert names == ["T=2", "T=4"]
    assert len(wandb_lines(console)) <= 2 * len(jobs), wandb_lines(console)


@pytest.mark.slow
def test_a_teacher_reused_from_the_cache_has_its_curves(sweep: tuple[list[Path], str]) -> None:
    jobs, _ = sweep
    for job in jobs:
        assert "Reusing cached teacher-mlp_large" in (job / "train.log").read_text()
        run = wandb_run(next((job / "wandb").glob("offline-run-*")))
        assert epochs_of(run, "teacher_mlp_large", "val/acc") == [0, 1]
        assert epochs_of(run, "teacher_mlp_large", "train/loss") == [0, 1]
        assert run["metrics"]["teacher_mlp_large/val/acc"].step_metric == "teacher_mlp_large/epoch"
        events = tensorboard(job / "tensorboard")
        assert [e.step for e in events.Scalars("teacher_mlp_large/val/acc")] == [0, 1]
        with open(job / "csv" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("teacher_mlp_large/val/acc")]
        assert [float(r["teacher_mlp_large/epoch"]) for r in rows] == [0, 1]


@pytest.mark.slow
def test_tensorboard_has_hparams_with_real_figures_the_report_text_and_images(sweep: tuple[list[Path], str]) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    job = sweep[0][0]
    report = json.loads((job / "report.json").read_text())
    student = next(m for m in report["models"] if m["model"] == "student")
    events = tensorboard(job / "tensorboard")
    tags = events.Tags()
    assert "hp_metric" not in tags["scalars"]
    assert events.Scalars("hparams/student_accuracy")[0].value == pytest.approx(student["accuracy"])
    assert events.Scalars("hparams/gap_closed")[0].value == pytest.approx(report["summary"]["gap_closed"])
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["distill.kd.temperature"].number_value == 2 and hparams["student"].string_value == "mlp_small"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "hparams/student_accuracy" in {m.name.tag for m in experiment.metric_infos}
    text = events.Tensors("report_table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| model |" in text and "| student |" in text
    assert "plots/report" in tags["images"]
    if (job / "curves.png").is_file():
        assert "plots/curves" in tags["images"]


def test_the_wandb_config_names_no_run_by_default() -> None:
    node = yaml.safe_load((REPO / "configs" / "logger" / "wandb.yaml").read_text())["wandb"]
    assert node["name"] is None and "anonymous" not in node
    tb = yaml.safe_load((REPO / "configs" / "logger" / "tensorboard.yaml").read_text())["tensorboard"]
    assert tb["default_hp_metric"] is False
