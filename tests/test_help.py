"""`--help` of each entry point: its own groups and options (base files left out, the user's own
included), five examples that compose, the run folder and the pointers to more.

The expectations are read from the YAML files themselves, not from `distill.cli.help_groups`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import CONFIG_DIR

# entry point -> (primary config, task_name)
ENTRY_POINTS = {"distill-train": ("train", "train"), "distill-lm": ("lm", "lm"), "distill-eval": ("eval", "eval")}
# A user's own options, in ./configs of the folder the commands start in.
USER_OPTIONS = {
    "configs/teacher/my_teacher.yaml": "my_teacher:\n  net: {_target_: torch.nn.Identity}\n",
    "configs/data/my_data.yaml": "_target_: distill.data.MNIST1DDataModule\n",
    "configs/lm_student/my_lm.yaml": "model: {_target_: distill.llm.models.causal_lm}\n",
    "configs/team.yaml": "defaults:\n  - train\n  - _self_\nseed: 7\n",
}


def command(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """An installed console script, started in `cwd`, as a user runs it."""
    exe = Path(sys.executable).with_name(script)
    assert exe.is_file(), f"{script} is not installed next to {sys.executable}"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    env.pop("DISTILL_ROOT", None)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("help")
    for name, text in USER_OPTIONS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def helps(workdir: Path) -> dict[str, str]:
    """Each entry point's `--help`, started in a folder with options of its own."""
    out = {}
    for script in ENTRY_POINTS:
        result = command(workdir, script, "--help")
        assert result.returncode == 0, result.stderr[-3000:]
        out[script] = result.stdout
    return out


def section(text: str, title: str) -> list[str]:
    """The lines under the header line that starts with `== title`, up to the first blank line."""
    head, sep, rest = text.partition(f"\n== {title}")
    assert sep, f"no '== {title}' section in:\n{text}"
    lines = []
    for line in rest.split("\n")[1:]:
        if not line.strip():
            break
        lines.append(line)
    return lines


def listed_groups(text: str) -> dict[str, list[str]]:
    """{group: options} of the help's config groups (a long line goes on, indented, on the next ones)."""
    joined: list[str] = []
    for line in section(text, "Config groups"):
        if line.startswith(" ") and joined:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    groups = {}
    for line in joined:
        group, sep, options = line.partition(": ")
        assert sep and group.replace("_", "").isalnum(), line
        groups[group] = options.split(", ")
    return groups


def named_groups(config_name: str) -> set[str]:
    """The config groups a primary config's defaults list names that have option files (read from its YAML)."""
    defaults = yaml.safe_load((Path(CONFIG_DIR) / f"{config_name}.yaml").read_text())["defaults"]
    groups = set()
    for entry in defaults:
        if isinstance(entry, dict):
            (key,) = entry
            group = key.split()[-1].lstrip("/")  # `optional local`, `override /x`
            if group != "hydra" and list((Path(CONFIG_DIR) / group).glob("*.yaml")):
                groups.add(group)
    return groups


def base_files(group: str) -> set[str]:
    """The shipped base files of a group: `*_base`, and a `default`/`base` that another file of the group extends."""
    folder = Path(CONFIG_DIR) / group
    names = {p.stem for p in folder.glob("*.yaml")}
    bases = {name for name in names if name.endswith("_base")}
    for path in folder.glob("*.yaml"):
        entries = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        bases |= {e for e in entries if isinstance(e, str) and e in {"default", "base"} and e != path.stem}
    return bases


def test_the_rule_finds_the_shipped_base_files() -> None:
    assert base_files("trainer") == {"default"} and base_files("experiment") == {"cifar100_base"}
    assert base_files("student") == set() and base_files("logger") == set()  # mlp_small, many extend real options


@pytest.mark.parametrize("script", list(ENTRY_POINTS))
def test_each_command_lists_exactly_its_own_groups(helps: dict[str, str], script: str) -> None:
    groups = listed_groups(helps[script])
    assert set(groups) == named_groups(ENTRY_POINTS[script][0])
    for group, options in groups.items():
        shipped = {p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")}
        assert not base_files(group) & set(options), (group, options)
        assert set(options) >= shipped - base_files(group), (group, options)
    assert "_target_" not in helps[script] and "== Config ==" not in helps[script]  # no dump of the config


def test_base_files_are_left_out_and_options_that_others_extend_stay(helps: dict[str, str]) -> None:
    train = listed_groups(helps["distill-train"])
    assert "default" not in train["trainer"] and {"cpu", "gpu", "ddp"} <= set(train["trainer"])
    assert "cifar100_base" not in train["experiment"] and "cifar100_res56_res20_kd" in train["experiment"]
    assert {"mlp", "mlp_small"} <= set(train["student"]) and {"csv", "many"} <= set(train["logger"])
    assert train["callbacks"] == ["default", "none"]  # a default nothing extends is an option


def test_train_and_lm_do_not_list_each_others_groups(helps: dict[str, str]) -> None:
    train, lm = listed_groups(helps["distill-train"]), listed_groups(helps["distill-lm"])
    assert not [group for group in train if group.startswith("lm_")]
    assert not {"teacher", "student", "distill", "experiment", "data"} & set(lm)
    assert {"lm_data", "lm_teacher", "lm_student", "lm_distill", "trainer", "compress"} <= set(lm)
    assert set(listed_groups(helps["distill-eval"])) == {"data", "paths", "extras"}


def test_the_users_own_options_are_listed(helps: dict[str, str], workdir: Path, tmp_path: Path) -> None:
    assert "my_teacher" in listed_groups(helps["distill-train"])["teacher"]
    assert "my_data" in listed_groups(helps["distill-train"])["data"]
    assert "my_data" in listed_groups(helps["distill-eval"])["data"]
    assert "my_lm" in listed_groups(helps["distill-lm"])["lm_student"]
    # from a folder given by --config-dir, and a primary config of the user's that extends train.yaml
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "their_mlp.yaml").write_text("net: {_target_: torch.nn.Identity}\n")
    result = command(workdir, "distill-train", "-cn", "team", "-cd", str(tmp_path), "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    groups = listed_groups(result.stdout)
    assert set(groups) == named_groups("train") and result.stdout.startswith("distill-train: ")
    assert "their_mlp" in groups["student"] and "my_teacher" in groups["teacher"]


@pytest.mark.parametrize("script", list(ENTRY_POINTS))
def test_the_header_run_folder_and_pointers(helps: dict[str, str], script: str) -> None:
    text = helps[script]
    task = ENTRY_POINTS[script][1]
    assert text.startswith(f"{script}: ")
    assert f"./logs/{task}/runs/<date>_<job id>/" in text
    assert f"./logs/{task}/multiruns/<date>/<job number>_<job id>/" in text
    more = "\n".join(section(text, "More"))
    for pointer in ("--cfg job", "-m ", "hydra/launcher=slurm", "--hydra-help", "README.md"):
        assert pointer in more, pointer
    assert (Path(CONFIG_DIR) / "hydra" / "launcher" / "slurm.yaml").is_file()


@pytest.mark.parametrize("script", list(ENTRY_POINTS))
def test_five_examples_that_compose(helps: dict[str, str], workdir: Path, script: str) -> None:
    examples = section(helps[script], "Examples")
    assert len(examples) == 5, examples
    for line in examples:
        words = shlex.split(line, comments=True)
        assert words[0] == script, line
        result = command(workdir, script, *words[1:], "--cfg", "job")
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"


def test_hydra_help_still_works(workdir: Path) -> None:
    result = command(workdir, "distill-train", "--hydra-help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== Flags ==" in result.stdout and "hydra/launcher:" in result.stdout


def test_a_template_that_asks_for_hydras_group_list_gets_it(workdir: Path) -> None:
    template = "hydra.help.template=$APP_CONFIG_GROUPS"
    result = command(workdir, "distill-eval", template, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: " in result.stdout and "trainer: " in result.stdout  # Hydra's own list: every group
