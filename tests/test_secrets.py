"""No credential reaches a file of the log folder, nor the console, whatever the entry point and however it ends."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import cli_env, cli_job, run_cli

from distill import secrets
from distill.secrets import REDACTED, clean_config_file, command_line_has_secret, is_secret_name, redact, scrub

WANDB_KEY = "sk-live-abcdef0123"  # passed on the command line, set in the job's environment by Hydra
HF_TOKEN = "hf_" + "q" * 30  # in the environment, referenced by ${oc.env:HF_TOKEN}
SWEPT = ("tok-aaaa1111", "tok-bbbb2222")  # the values of a sweep over a credential
REFUSED = ("hunter2", "sk-live-abcdef")  # keys that nothing reads
ALL = (WANDB_KEY, HF_TOKEN, *SWEPT, *REFUSED)
UPLOAD = [  # a callback holding a credential, as an upload hook would
    "+callbacks.up._target_=tests.helpers.NeedsCredential",
    "+callbacks.up.token=${oc.env:HF_TOKEN}",
    "+callbacks.up.url=https://u:${oc.env:HF_TOKEN}@host",
]


def job(tmp: Path, *extra: str) -> list[str]:
    """A seconds-long distill-train job whose every file goes under `tmp`/logs (Hydra's run folder)."""
    short = ["teacher.mlp_large.fit.epochs=2", "student.fit.epochs=2", "student.baseline.epochs=2"]
    return cli_job(tmp, *short, *extra)


def env(**extra: str) -> dict[str, str]:
    return cli_env(HF_TOKEN=HF_TOKEN, WANDB_MODE="offline", **extra)


def leaks(root: Path, *outputs: str) -> list[str]:
    """Every file under `root` (and every captured output) holding one of the credentials."""
    found = [str(p) for p in root.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in ALL)]
    return found + [f"output #{i}" for i, text in enumerate(outputs) if any(s in text for s in ALL)]


def only(folder: Path) -> Path:
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    return run


# -- the shared code -----------------------------------------------------------------------------------


def test_credential_names() -> None:
    for name in ("api_key", "WANDB_API_KEY", "HF_TOKEN", "token", "authToken", "apiKey", "PGPASSWORD",
                 "db_password", "client_secret", "credentials", "private_key"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("tokenizer", "max_new_tokens", "pad_token_id", "eos_token", "TOKENIZERS_PARALLELISM", "secretary"):
        assert not is_secret_name(name), name
    # The LM configs' tokenizer settings are neither redacted nor taken for credentials on the command line.
    assert redact({"lm_data": {"tokenizer": "bpe"}, "samples": {"max_new_tokens": 40}}, set()) == {
        "lm_data": {"tokenizer": "bpe"},
        "samples": {"max_new_tokens": 40},
    }
    assert not command_line_has_secret(["lm_data.tokenizer=/models/qwen", "samples.max_new_tokens=8"])


def test_scrub_takes_credentials_from_the_environment_and_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to scrub from text
    monkeypatch.setattr(secrets, "_overrides_seen", set())
    argv = ["x", f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}", f"+up.token={SWEPT[0]},{SWEPT[1]}", "+api_key=ab"]
    monkeypatch.setattr(sys, "argv", [*argv, "lr=0.1", "+a.token=${oc.env:HF_TOKEN}"])
    text = (
        f"#0 : +up.token={SWEPT[0]} +api_key=ab lr=0.1 +a.token=${{oc.env:HF_TOKEN}}\n"
        f"#1 : +up.token={SWEPT[1]}\nkey {WANDB_KEY} and url https://u:{HF_TOKEN}@host abc"
    )
    assert scrub(text) == (
        f"#0 : +up.token={REDACTED} +api_key={REDACTED} lr=0.1 +a.token={REDACTED}\n"
        f"#1 : +up.token={REDACTED}\nkey {REDACTED} and url https://u:{REDACTED}@host abc"
    )
    # A job of a submitted sweep has no command line: the overrides of its config count.
    monkeypatch.setattr(sys, "argv", ["submitit"])
    assert scrub(f"+up.token={SWEPT[1]}") == f"+up.token={SWEPT[1]}"
    secrets.remember([f"+up.token={SWEPT[1]}", "lr=0.1"])
    assert scrub(f"a {SWEPT[1]} b") == f"a {REDACTED} b"


def test_saved_hydra_configs_lose_their_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.setattr(secrets, "_overrides_seen", set())
    task = [f"+my_token={REFUSED[0]}", "lr=0.1", "+url=https://u:${oc.env:HF_TOKEN}@h"]
    hydra = {
        "hydra": {
            "overrides": {"hydra": [f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}"], "task": task},
            "job": {
                "env_set": {"WANDB_API_KEY": WANDB_KEY, "OMP_NUM_THREADS": "1"},
                "override_dirname": f"+my_token:{REFUSED[0]}|+url:https://u:${{oc.env:HF_TOKEN}}@h|lr:0.1",
                "config": {"override_dirname": {"kv_sep": ":", "item_sep": "|"}},
            },
        },
        "url": f"https://u:{HF_TOKEN}@h",
        "tokenizer": "bpe",
    }
    path = tmp_path / "hydra.yaml"
    path.write_text(yaml.safe_dump(hydra, sort_keys=False))
    (tmp_path / "overrides.yaml").write_text(yaml.safe_dump(task))
    assert clean_config_file(path) and clean_config_file(tmp_path / "overrides.yaml")
    clean = yaml.safe_load(path.read_text())["hydra"]
    assert clean["overrides"] == {
        "hydra": [f"+hydra.job.env_set.WANDB_API_KEY={REDACTED}"],
        "task": [f"+my_token={REDACTED}", "lr=0.1", "+url=https://u:${oc.env:HF_TOKEN}@h"],
    }
    assert clean["job"]["env_set"] == {"WANDB_API_KEY": REDACTED, "OMP_NUM_THREADS": "1"}
    assert clean["job"]["override_dirname"] == f"+my_token:{REDACTED}|+url:https://u:${{oc.env:HF_TOKEN}}@h|lr:0.1"
    assert yaml.safe_load(path.read_text())["url"] == REDACTED
    assert yaml.safe_load(path.read_text())["tokenizer"] == "bpe"
    assert yaml.safe_load((tmp_path / "overrides.yaml").read_text())[0] == f"+my_token={REDACTED}"
    assert not clean_config_file(path)  # nothing left to clean


def test_log_records_and_crash_traces_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["x", f"+up.token={SWEPT[0]}"])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # as in a fresh process
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.secrets")
    logger.addHandler(handler)
    try:
        secrets.install_log_scrubber()
        secrets.install_log_scrubber()  # installed once
        assert logging.getLogRecordFactory() is not factory
        logger.warning("\t#0 : %s lr=%d", f"+up.token={SWEPT[0]}", 1)
        try:
            raise RuntimeError(f"refused: {SWEPT[0]}")
        except RuntimeError:
            logger.exception("upload %s failed", SWEPT[0])
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        try:
            raise ValueError(f"bad {SWEPT[0]}")
        except ValueError as err:
            sys.excepthook(ValueError, err, err.__traceback__)
        trace = sys.stderr.getvalue()
    finally:
        logging.setLogRecordFactory(factory)
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert logged.startswith(f"\t#0 : +up.token={REDACTED} lr=1\nupload {REDACTED} failed\n")
    assert f"RuntimeError: refused: {REDACTED}" in logged and SWEPT[0] not in logged
    assert f"ValueError: bad {REDACTED}" in trace and SWEPT[0] not in trace


def test_print_config_shows_no_credential(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from omegaconf import OmegaConf

    from distill.extras import apply_extras

    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    cfg = OmegaConf.create({"extras": {"print_config": True}, "up": {"token": "abc", "url": f"u:{HF_TOKEN}@h"}})
    apply_extras(cfg)
    printed = capsys.readouterr().out
    assert f"token: {REDACTED}" in printed and f"url: {REDACTED}" in printed and HF_TOKEN not in printed


# -- real runs of the entry points --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("ok")
    args = job(tmp, f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}", *UPLOAD, "extras.print_config=true")
    return tmp, run_cli(args, tmp, env=env())


@pytest.mark.slow
def test_a_successful_run_leaves_no_credential(trained) -> None:
    tmp, result = trained
    assert result.returncode == 0, result.stderr[-2000:]
    assert leaks(tmp, result.stdout, result.stderr) == []
    run = only(tmp / "logs" / "train" / "runs")
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["job"]["env_set"]["WANDB_API_KEY"] == REDACTED
    assert f"+hydra.job.env_set.WANDB_API_KEY={REDACTED}" in hydra["overrides"]["hydra"]
    assert f"+callbacks.up.token={REDACTED}" in hydra["job"]["override_dirname"]
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["callbacks"]["up"]["token"] == REDACTED
    assert f"token: {REDACTED}" in (run / "csv" / "hparams.yaml").read_text()
    assert f"token: {REDACTED}" in result.stdout  # extras.print_config


@pytest.mark.slow
def test_a_run_with_unknown_credential_keys_leaves_none(tmp_path: Path) -> None:
    result = run_cli(job(tmp_path, f"+my_token={REFUSED[0]}", f"+api_key={REFUSED[1]}"), tmp_path, env=env())
    assert result.returncode in (0, 2), result.stderr[-2000:]  # refused (nothing reads them) or run
    assert leaks(tmp_path, result.stdout, result.stderr) == []
    if result.returncode == 2:
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_a_sweep_leaves_no_credential(tmp_path: Path) -> None:
    args = ["-m"] + job(
        tmp_path, f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}",
        "+callbacks.up._target_=tests.helpers.NeedsCredential", f"+callbacks.up.token={SWEPT[0]},{SWEPT[1]}",
        # multirun.yaml is clean by the time the jobs train
        "+callbacks.check._target_=tests.helpers.SweepConfigIsClean", "+callbacks.check.variable=WANDB_API_KEY",
    )  # fmt: skip
    result = run_cli(args, tmp_path, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    listing = [line for line in result.stdout.splitlines() if " : " in line and "#" in line]
    assert len(listing) == 2 and all(f"+callbacks.up.token={REDACTED}" in line for line in listing)
    assert leaks(tmp_path, result.stdout, result.stderr) == []
    sweep = only(tmp_path / "logs" / "train" / "multiruns")
    assert sorted(p.name.split("_")[0] for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    saved = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert saved["hydra"]["job"]["env_set"]["WANDB_API_KEY"] == REDACTED
    assert f"+callbacks.up.token={REDACTED}" in saved["hydra"]["overrides"]["task"]


@pytest.mark.slow
def test_a_submitit_sweep_leaves_no_credential(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m"] + job(tmp_path, "hydra/launcher=submitit_local", f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}",
               "+callbacks.up._target_=tests.helpers.NeedsCredential", f"+callbacks.up.token={SWEPT[0]},{SWEPT[1]}")  # fmt: skip
    result = run_cli(args, tmp_path, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only(tmp_path / "logs" / "train" / "multiruns")
    assert len([p for p in sweep.iterdir() if p.is_dir() and (p / "report.json").is_file()]) == 2
    assert list(sweep.rglob("*.out"))  # submitit's job logs stay
    assert leaks(tmp_path, result.stdout, result.stderr) == []


@pytest.mark.slow
def test_an_evaluation_leaves_no_credential(trained, tmp_path: Path) -> None:
    tmp, _ = trained
    (student,) = (tmp / "logs" / "train" / "runs").glob("*/student.ckpt")
    args = [f"ckpt_path={student}", f"paths.root_dir={tmp_path}", "report.latency_repeats=1",
            "report.latency_batch_sizes=[1]", f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}"]  # fmt: skip
    result = run_cli(args, tmp_path, module="distill.eval", env=env())
    assert result.returncode == 0, result.stderr[-2000:]
    run = only(tmp_path / "logs" / "eval" / "runs")
    assert (run / "report.json").is_file()
    assert f"WANDB_API_KEY: {REDACTED}" in (run / ".hydra" / "hydra.yaml").read_text()
    assert leaks(tmp_path, result.stdout, result.stderr) == []


@pytest.mark.slow
def test_a_crashing_run_leaves_no_credential(tmp_path: Path) -> None:
    crash = ["+callbacks.up.fail=true", f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}"]
    result = run_cli(job(tmp_path, *UPLOAD, *crash), tmp_path, env=env())
    assert result.returncode == 1
    assert f"RuntimeError: upload to https://u:{REDACTED}@host refused" in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error executing job with overrides")]
    assert f"'+callbacks.up.token={REDACTED}'" in line
    assert leaks(tmp_path, result.stdout, result.stderr) == []
    assert (only(tmp_path / "logs" / "train" / "runs") / ".hydra" / "hydra.yaml").is_file()


@pytest.mark.slow
def test_a_refused_run_leaves_no_credential(tmp_path: Path) -> None:
    args = job(tmp_path, *UPLOAD, f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}", "distill.kd.temperature=-1")
    result = run_cli(args, tmp_path, env=env())
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert leaks(tmp_path, result.stdout, result.stderr) == []
    assert (only(tmp_path / "logs" / "train" / "runs") / ".hydra" / "hydra.yaml").is_file()


@pytest.mark.slow
def test_an_lm_run_leaves_no_credential(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    teacher = [f"lm_teacher.model.{k}={v}" for k, v in (("hidden_size", 16), ("num_hidden_layers", 1),
               ("intermediate_size", 32), ("num_attention_heads", 2), ("num_key_value_heads", 2))]  # fmt: skip
    student = [a.replace("lm_teacher", "lm_student") for a in teacher]
    args = [
        "lm_data.max_chars=40000", "lm_data.vocab_size=280", "lm_data.seq_len=32", "lm_data.batch_size=16",
        *teacher, *student, "lm_teacher.fit.epochs=1", "lm_teacher.fit.batch_size=16", "lm_student.fit.epochs=1",
        "lm_student.fit.batch_size=16", "lm_student.fit.train_fraction=0.5", "samples.count=1",
        "samples.max_new_tokens=4", "report.latency_repeats=1", f"paths.root_dir={tmp_path}",
        "callbacks.progress_bar.refresh_rate=0", f"+hydra.job.env_set.WANDB_API_KEY={WANDB_KEY}", *UPLOAD[:2],
    ]  # fmt: skip
    result = run_cli(args, tmp_path, module="distill.llm.train", env=env())
    assert result.returncode == 0, result.stderr[-2000:]
    run = only(tmp_path / "logs" / "lm" / "runs")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["callbacks"]["up"]["token"] == REDACTED and config["lm_data"]["tokenizer"] == "bpe"
    assert leaks(tmp_path, result.stdout, result.stderr) == []
