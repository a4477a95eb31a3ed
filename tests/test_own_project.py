"""Your own project: configs and code in a folder outside the package, run with the installed commands.

The folder holds a dataset, a network, a loss term and a compression stage (`my_project/`) and
their configs (`configs/<group>/`), as README's "Your own project" lays out; the commands are the
console scripts, started in that folder, with no PYTHONPATH.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tests.conftest import REPO

from distill import cli
from distill.cli import CONFIG_DIR, check_group_choices, extra_config_dirs, import_hint

PROJECT = {
    "my_project/__init__.py": "",
    "my_project/data.py": '''
        """Points on three noisy concentric rings: the class is the ring."""

        import numpy as np

        from distill.data.base import ArrayDataModule, Splits


        class RingsDataModule(ArrayDataModule):
            source = "rings"

            def __init__(self, train_size: int = 600, transfer_size: int = 2000, noise: float = 0.15, **kwargs):
                super().__init__(**kwargs)
                self.train_size, self.transfer_size, self.noise = train_size, transfer_size, noise

            def load_splits(self) -> Splits:
                rng = np.random.default_rng(self.seed)

                def sample(n):
                    y = rng.integers(0, 3, n)
                    angle = rng.uniform(0, 2 * np.pi, n)
                    radius = 1.0 + y + rng.normal(0, self.noise, n)
                    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32), y

                (x_train, y_train), (x_val, y_val), (x_test, y_test) = sample(self.train_size), sample(200), sample(200)
                return Splits(x_train, y_train, x_val, y_val, x_test, y_test, x_transfer=sample(self.transfer_size)[0])
    ''',
    "my_project/nets.py": '''
        """A residual MLP: a linear stem, `blocks` pre-norm residual blocks of `width`, a linear head."""

        import math

        from torch import nn


        class ResMLP(nn.Module):
            def __init__(self, input_shape, num_classes: int, width: int = 32, blocks: int = 2):
                super().__init__()
                self.stem = nn.Linear(math.prod(input_shape), width)
                self.blocks = nn.ModuleList(
                    nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(blocks)
                )
                self.head = nn.Linear(width, num_classes)

            def forward(self, x):
                h = self.stem(x.flatten(1))
                for block in self.blocks:
                    h = h + block(h)
                return self.head(h)
    ''',
    "my_project/losses.py": '''
        """1 - cosine similarity of the student's and the teacher's logits, averaged over the batch."""

        import torch.nn.functional as F

        from distill.losses import LossTerm


        class CosineLogits(LossTerm):
            def forward(self, view):
                return (1 - F.cosine_similarity(view.student_logits, view.teacher_logits, dim=-1)).mean()
    ''',
    "my_project/stages.py": '''
        """Round every weight matrix to 2^(bits-1) - 1 levels each side of zero (one scale per tensor)."""

        import copy

        import torch

        from distill.compress.base import StageResult


        class RoundWeights:
            def __init__(self, bits: int = 4):
                self.bits = bits

            def apply(self, model, ctx):
                model = copy.deepcopy(model)
                levels = 2 ** (self.bits - 1) - 1
                error, tensors = 0.0, 0
                with torch.no_grad():
                    for param in model.parameters():
                        if param.dim() < 2:
                            continue  # biases and norms stay as they are
                        scale = param.abs().max().clamp(min=1e-12) / levels
                        rounded = torch.round(param / scale) * scale
                        error = max(error, float((rounded - param).abs().max()))
                        param.copy_(rounded)
                        tensors += 1
                return StageResult(model=model, info={"bits": self.bits, "tensors": tensors, "max_abs_error": error})
    ''',
    "configs/data/rings.yaml": """
        _target_: my_project.data.RingsDataModule
        train_size: 600
        transfer_size: 2000
        batch_size: 128
        eval_batch_size: 1024
        seed: ${seed}
        num_classes: 3
        input_shape: [2]
    """,
    "configs/teacher/resmlp_wide.yaml": """
        resmlp_wide:
          net:
            _target_: my_project.nets.ResMLP
            input_shape: ${data.input_shape}
            num_classes: ${data.num_classes}
            width: 128
          ckpt_path: null
          fit:
            batch_size: 128
            epochs: 15
            optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.003}
    """,
    "configs/student/resmlp.yaml": """
        # A class of its own: the whole `net` node is spelt here (extending student/mlp would pass it `hidden`).
        net:
          _target_: my_project.nets.ResMLP
          input_shape: ${data.input_shape}
          num_classes: ${data.num_classes}
          width: 16
        fit:
          batch_size: 256
          epochs: 15
          optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.01}
        baseline:
          batch_size: 128
          epochs: 15
          optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.01}
    """,
    "configs/distill/cosine.yaml": """
        cosine:
          _target_: my_project.losses.CosineLogits
          weight: 0.5
    """,
    "configs/compress/round4.yaml": """
        round4:
          _target_: my_project.stages.RoundWeights
          bits: 4
    """,
}

# Options kept elsewhere, reached through --config-dir or hydra.searchpath.
SHARED = {
    "teacher/my_tv.yaml": """
        my_tv:
          net:
            _target_: torchvision.models.resnet18
            num_classes: ${data.num_classes}
          ckpt_path: null
          fit: {batch_size: 64, epochs: 1, optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 0.1}}
    """,
}


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write(tmp_path_factory.mktemp("my_project_folder"), PROJECT)
    assert REPO not in root.parents and root.resolve() != REPO
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("shared_configs"), SHARED)


def command(cwd: Path, *args: str, script: str = "distill-train", timeout: int = 300) -> subprocess.CompletedProcess:
    """An installed console script, started in `cwd`, with no PYTHONPATH: as a user runs it."""
    exe = Path(sys.executable).with_name(script)
    assert exe.is_file(), f"{script} is not installed next to {sys.executable}"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    env.pop("PYTHONPATH", None)
    env.pop("DISTILL_ROOT", None)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def composed(cwd: Path, *args: str) -> dict:
    """The job config `distill-train ARGS --cfg job` prints."""
    result = command(cwd, *args, "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return OmegaConf.to_container(OmegaConf.create(result.stdout))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def parameters_of(project: Path, **kwargs: object) -> int:
    """Parameters of the project's ResMLP, built here from its own file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("own_project_nets", project / "my_project" / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sum(p.numel() for p in module.ResMLP(**kwargs).parameters())


@pytest.mark.slow
def test_a_project_of_ones_own_runs_end_to_end(project: Path) -> None:
    result = command(
        project,
        "data=rings",
        "teacher=[resmlp_wide]",
        "student=resmlp",
        "distill=[hard,kd,cosine]",
        "compress=[round4]",
        "report.latency_repeats=3",
        "report.latency_batch_sizes=[1,64]",
        "callbacks.progress_bar.refresh_rate=0",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = project / "run"
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.data._target_ == "my_project.data.RingsDataModule"
    report = json.loads((run / "report.json").read_text())
    rows = {row["model"]: row for row in report["models"]}
    assert list(rows) == ["teacher:resmlp_wide", "baseline", "student", "compress:round4"]

    # The project's network, sized by the project's data (2 features, 3 classes).
    assert rows["teacher:resmlp_wide"]["parameters"] == parameters_of(
        project, input_shape=[2], num_classes=3, width=128
    )
    assert rows["student"]["parameters"] == parameters_of(project, input_shape=[2], num_classes=3, width=16) == 707
    assert rows["teacher:resmlp_wide"]["accuracy"] >= 0.9  # three rings 1 apart, noise 0.15: separable
    assert rows["student"]["accuracy"] >= 0.9

    # The project's compression stage: what it reported, and weights it really rounded.
    stage = rows["compress:round4"]
    assert stage["stage"]["bits"] == 4 and stage["stage"]["tensors"] == 4  # stem, two blocks, head
    assert 0 < stage["stage"]["max_abs_error"] < 0.5
    assert stage["parameters"] == 707 and stage["nonzero_parameters"] < 707  # small weights rounded to zero
    assert stage["accuracy"] >= 0.8

    # The project's loss term, logged under its option name, falling as the student learns.
    with open(run / "csv" / "metrics.csv") as f:
        cosine = [float(row["student/train/cosine"]) for row in csv.DictReader(f) if row.get("student/train/cosine")]
    assert len(cosine) >= 5 and all(0.0 <= value <= 2.0 and math.isfinite(value) for value in cosine)
    assert cosine[-1] < cosine[0]


@pytest.mark.slow
@pytest.mark.parametrize("flag", [["-cd", "{dir}"], ["--config-dir", "{dir}"], ["--config-dir={dir}"]])
def test_config_dir(project: Path, shared: Path, flag: list[str]) -> None:
    args = [part.format(dir=shared) for part in flag]
    cfg = composed(project, *args, "teacher=my_tv")
    assert list(cfg["teacher"]) == ["my_tv"]
    assert cfg["teacher"]["my_tv"]["net"]["_target_"] == "torchvision.models.resnet18"


@pytest.mark.slow
def test_searchpath_on_the_command_line(project: Path, shared: Path) -> None:
    cfg = composed(project, f"hydra.searchpath=[file://{shared}]", "teacher=[cnn,my_tv]")
    assert list(cfg["teacher"]) == ["cnn", "my_tv"]


@pytest.mark.slow
def test_searchpath_in_ones_own_primary_config(project: Path, shared: Path, tmp_path: Path) -> None:
    # A primary config of the project (./configs/team.yaml) that extends distill-train's and adds a folder.
    folder = write(tmp_path, {**PROJECT, "configs/team.yaml": f"defaults:\n  - train\n  - _self_\n"
                              f"hydra:\n  searchpath: [file://{shared}]\nseed: 7\n"})  # fmt: skip
    cfg = composed(folder, "-cn", "team", "teacher=my_tv", "student=resmlp")
    assert list(cfg["teacher"]) == ["my_tv"] and cfg["seed"] == 7
    assert cfg["student"]["net"]["_target_"] == "my_project.nets.ResMLP" and cfg["task_name"] == "train"
    line = one_error_line(command(folder, "-cn", "team", "teacher=my_tvv", "--cfg", "job"))
    assert "valid options:" in line and "my_tv," in line and str(shared) in line


@pytest.mark.slow
def test_adding_an_option_to_a_group(project: Path) -> None:
    cfg = composed(project, "+distill=cosine")
    assert cfg["distill"]["cosine"] == {"_target_": "my_project.losses.CosineLogits", "weight": 0.5}
    assert {"hard", "kd"} <= set(cfg["distill"])


@pytest.mark.slow
def test_an_unknown_option_names_the_folders_searched(project: Path, shared: Path) -> None:
    line = one_error_line(command(project, "-cd", str(shared), "teacher=[cnn,my_tvv]", "--cfg", "job"))
    assert line.startswith(
        "error: unknown teacher option 'my_tvv'; valid options: bert_base, bert_small, cnn, cnn_small,"
    )
    assert "my_tv," in line and "resmlp_wide," in line  # from --config-dir and from ./configs
    searched = line.split("(searched ", 1)[1].rstrip(")").split(", ")
    assert searched[:2] == [CONFIG_DIR, str((project / "configs").resolve())]
    assert str(shared) in searched

    line = one_error_line(command(project, f"hydra.searchpath=[file://{project}/nowhere]", "data=nope"))
    assert f"{project}/nowhere (not found)" in line
    line = one_error_line(command(project, "-cd", str(project / "nowhere"), "teacher=cnn"))
    assert line == f"error: config directory not found: {project / 'nowhere'} (--config-dir)"


@pytest.mark.slow
def test_each_command_lists_its_own_groups(project: Path) -> None:
    def groups(script: str) -> dict[str, str]:
        result = command(project, "--help", script=script, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        block = result.stdout.split("\n== Config groups", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
        return dict(line.split(": ", 1) for line in block.replace("\n    ", " ").strip().splitlines())

    train = groups("distill-train")
    assert {"data", "teacher", "student", "distill", "compress", "trainer", "experiment"} <= set(train)
    assert not [g for g in train if g.startswith("lm_")]
    assert "resmlp_wide" in train["teacher"].split(", ") and "rings" in train["data"].split(", ")
    lm = groups("distill-lm")
    assert {"lm_data", "lm_teacher", "lm_student", "lm_distill", "trainer"} <= set(lm)
    assert not {"data", "teacher", "student", "distill", "experiment"} & set(lm)
    assert set(groups("distill-eval")) == {"data", "paths", "extras"}


def test_configs_local_holds_options_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = write(
        tmp_path / "package_configs", {"teacher/cnn.yaml": "cnn: {}\n", "local/teacher/mine.yaml": "mine: {}\n"}
    )
    monkeypatch.setattr(cli, "CONFIG_DIR", str(main))
    monkeypatch.chdir(tmp_path)  # no ./configs here
    assert extra_config_dirs() == [("distill-local", f"file://{main / 'local'}")]
    assert check_group_choices(["teacher=[cnn,mine]"], config_dir=str(main)) is None
    line = check_group_choices(["teacher=other"], config_dir=str(main))
    assert line == f"unknown teacher option 'other'; valid options: cnn, mine (searched {main}, {main / 'local'})"


def test_the_checkouts_own_configs_are_not_added_twice() -> None:
    assert Path(CONFIG_DIR) == REPO / "configs"  # a source checkout
    assert [provider for provider, _ in extra_config_dirs(cwd=str(REPO))] in ([], ["distill-local"])


def test_import_hint() -> None:
    hint = import_hint("no_such_project.nets.ResMLP")
    assert hint.startswith("no module 'no_such_project' here: the command imports modules from the folder it starts in")
    assert os.getcwd() in hint and "no_such_project/ or no_such_project.py" in hint
    assert import_hint("distill.nets.NoSuchNet") == ""  # the package is there: the name is wrong, not the folder
