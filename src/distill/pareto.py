"""The Pareto front of a multi-objective search, and the test figures of the one model it picks.

A search (`hparams_search=...`, Optuna with `direction: [maximize, minimize, minimize]`) trades validation
accuracy (perplexity for distill-lm, lower is better) against bytes on disk and latency. The report.json of each
trial holds a `search` entry (its last model's figures, measured on the validation split) and, with a budget,
a `budget` entry. When the search ends, `ParetoFront` (a Hydra callback) writes into the sweep folder:

    pareto.json   every trial with its objectives and `on_front`, the front, the best trial within the budget
    pareto.md     the front as a table, the best model (its trial folder and file), failed trials, test figures
    pareto.png    validation accuracy against bytes: the front joined and coloured by latency, the budget's lines
    best/         the best trial rerun as one run (`hydra.mode=RUN`) with `report.split=test`: the only use of
                  the test set

The best trial is the most accurate whose model meets the budget; without a budget no single model is picked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from distill.atomic import write_text
from distill.budget import describe, teacher_reference
from distill.errors import DistillError
from distill.plots import _figure, _set_log_axis, human_bytes, parse_override, save, swept_parameters
from distill.report import markdown_table
from distill.secrets import REDACTED
from distill.sweeps import job_folders, job_number, job_overrides

log = logging.getLogger(__name__)

BEST_DIR = "best"  # the rerun of the best trial, inside the sweep folder
SENSES = {"maximize": 1, "minimize": -1}
METRIC_SENSE = {"accuracy": "maximize", "perplexity": "minimize"}
SIZE_OBJECTIVES = ("bytes", "latency_ms")  # both minimised
QUALITY_LIMITS = {"accuracy": ("max_accuracy_drop", -1), "perplexity": ("max_perplexity_increase", 1)}
# Overrides the rerun leaves out: what makes the run a search, and what the rerun sets itself.
NOT_RERUN = ("hydra.sweeper", "hydra/sweeper", "hydra.mode", "hydra.run.dir", "report.split")
MODULES = {"train": "distill.train", "lm": "distill.llm.train"}  # primary config -> its command's module
SAME_FIGURE = 1e-6  # relative tolerance of "the rerun measured the trial's validation figure again"


def non_dominated(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the Pareto-optimal `points`, in order: those no other point dominates (is at least as good on
    every objective and strictly better on one). `senses`: "maximize" or "minimize", one per objective.
    Identical points do not dominate each other: all of them stay."""
    signs = [SENSES[s] for s in senses]
    keys = [tuple(sign * v for sign, v in zip(signs, p, strict=True)) for p in points]  # larger is better

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return a != b and all(x >= y for x, y in zip(a, b, strict=True))

    return [i for i, b in enumerate(keys) if not any(dominates(a, b) for a in keys)]


# -- trials ----------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One trial of a search: its folder, job number and overrides and, from its report.json, the `search`
    entry (None: the trial failed), the `budget` entry, what its model misses of the budget (limit -> excess)
    and the teacher's validation figure that quality limits are measured from."""

    folder: Path
    job: int | None
    overrides: list[str]
    search: dict[str, Any] | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    misses: dict[str, float] = field(default_factory=dict)
    reference: float | None = None

    @property
    def name(self) -> str:
        return self.folder.name


def read_trial(folder: Path) -> Trial:
    """The trial in `folder`; without report.json, or without a `search` entry in it, a failed one."""
    trial = Trial(folder, job_number(folder), job_overrides(folder))
    report_file = folder / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    search = report.get("search")
    if not search:
        return trial
    models = report.get("models", [])
    row = next((r for r in models if r.get("model") == search.get("model")), {})
    budget = report.get("budget") or {}
    trial.search, trial.budget, trial.misses = search, budget, row.get("budget_misses") or {}
    trial.reference = (budget.get("reference") or teacher_reference(models)).get(metric_of([trial]))
    return trial


def read_trials(sweep_dir: Path) -> list[Trial]:
    """Every trial of the search in `sweep_dir` (its job folders, by job number; not the rerun in best/)."""
    return [read_trial(p) for p in job_folders(sweep_dir)]


def metric_of(trials: Sequence[Trial]) -> str:
    """The quality objective: "perplexity" when a trial's search entry has one (distill-lm), else "accuracy"."""
    return "perplexity" if any("perplexity" in (t.search or {}) for t in trials) else "accuracy"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def objectives(trial: Trial, metric: str) -> tuple[float, ...] | None:
    """(quality, bytes, latency) of the trial's model, or None when the trial failed or one was not measured."""
    values = [(trial.search or {}).get(k) for k in (metric, *SIZE_OBJECTIVES)]
    return tuple(values) if trial.search and all(map(_number, values)) else None


def best_within_budget(trials: Sequence[Trial]) -> tuple[Trial | None, Trial | None]:
    """(best, closest). Best: the trial whose model meets the budget with the highest validation accuracy (the
    lowest perplexity); ties go to fewer bytes, then to lower latency. When none does, best is None and closest
    is the trial whose model misses the fewest limits, ties to the smallest sum of excesses relative to their
    limits; both None when no trial was judged against a budget (none set)."""
    done = [t for t in trials if t.search]
    within = [t for t in done if t.search.get("within_budget") is True]
    if within:
        metric = metric_of(done)
        sign = SENSES[METRIC_SENSE[metric]]

        def rank(t: Trial) -> tuple[float, ...]:
            value = t.search.get(metric)
            figures = [t.search.get(k) for k in SIZE_OBJECTIVES]
            return (-sign * value if _number(value) else math.inf, *(v if _number(v) else math.inf for v in figures))

        return min(within, key=rank), None
    missed = [t for t in done if t.search.get("within_budget") is False]
    return None, (min(missed, key=_shortfall) if missed else None)


def _shortfall(trial: Trial) -> tuple[int, float]:
    limits = trial.budget.get("limits") or {}
    return len(trial.misses), sum(v / limits[k] if limits.get(k) else v for k, v in trial.misses.items())


# -- pareto.json, pareto.md, pareto.png ------------------------------------------------------------


def _record(trial: Trial, on_front: bool = False) -> dict[str, Any]:
    record = {"trial": trial.name, "job": trial.job, "folder": str(trial.folder), "overrides": trial.overrides}
    if trial.search is None:
        reason = "no search entry in report.json" if (trial.folder / "report.json").is_file() else "no report.json"
        return {**record, "failed": reason, "on_front": False}
    return {**record, **trial.search, "on_front": on_front}


def _quality_limit(trials: Sequence[Trial], metric: str, limits: dict[str, float]) -> float | None:
    """The lowest validation accuracy (highest perplexity) the budget allows: the teacher's figure less the allowed
    drop (plus the allowed increase); None without that limit, or when trials disagree on the teacher's figure."""
    key, sign = QUALITY_LIMITS[metric]
    references = {round(t.reference, 12) for t in trials if t.reference is not None}
    if key not in limits or len(references) != 1:
        return None
    return references.pop() + sign * limits[key]


def write_front(sweep_dir: Path, trials: Sequence[Trial]) -> dict[str, Any]:
    """Write pareto.json, pareto.md and pareto.png into `sweep_dir`; return what pareto.json holds."""
    metric = metric_of(trials)
    measured = [t for t in trials if objectives(t, metric)]
    senses = [METRIC_SENSE[metric], *("minimize" for _ in SIZE_OBJECTIVES)]
    front = [measured[i] for i in non_dominated([objectives(t, metric) for t in measured], senses)]
    on_front = {t.name for t in front}
    best, closest = best_within_budget(trials)
    limits = next((t.budget["limits"] for t in trials if t.budget.get("limits")), {})
    records = [_record(t, t.name in on_front) for t in trials]
    data = {
        "sweep": str(sweep_dir),
        "metric": metric,
        "split": "val",
        "objectives": dict(zip((metric, *SIZE_OBJECTIVES), senses, strict=True)),
        "limits": limits,
        "quality_limit": _quality_limit(trials, metric, limits),
        "trials": records,
        "front": [t.name for t in sorted(front, key=lambda t: t.search["bytes"])],
        "best": _record(best, best.name in on_front) if best else None,
        "closest": {**_record(closest, closest.name in on_front), "misses": closest.misses} if closest else None,
        "failed": [r["trial"] for r in records if "failed" in r],
    }
    data["plot"] = "pareto.png" if write_plot(sweep_dir / "pareto.png", data) else None
    write_files(sweep_dir, data)
    return data


def write_files(sweep_dir: Path, data: dict[str, Any]) -> None:
    """pareto.json and pareto.md from `data` (what `write_front` returns, with `test` once the best is tested)."""
    write_text(sweep_dir / "pareto.json", json.dumps(data, indent=2))
    write_text(sweep_dir / "pareto.md", front_markdown(data))


def _cell(value: Any, fmt: str = "{}") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt.format(value)


def _override_value(value: str | None) -> str:
    """An override's value as shown: numbers to 4 significant digits."""
    try:
        return f"{float(value):.4g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _cell(value)


def _figure_text(record: dict[str, Any], metric: str) -> str:
    return (
        f"validation {metric} {record[metric]:.4f}, {_cell(record.get('bytes'), '{:,}')} bytes, "
        f"{_cell(record.get('latency_ms'), '{:.3f}')} ms"
    )


def front_markdown(data: dict[str, Any]) -> str:
    """pareto.md: the front's table, the best model within the budget, the failed trials, the test figures."""
    metric, records = data["metric"], data["trials"]
    params, varying = swept_parameters([r["overrides"] for r in records])
    by_name = {r["trial"]: (r, p) for r, p in zip(records, params, strict=True)}
    done = len(records) - len(data["failed"])
    lines = [f"# Pareto front of {Path(data['sweep']).name}", ""]
    lines += [
        f"{len(data['front'])} of {done} completed trials are on the front (no other trial has a validation "
        f"{metric} at least as good, as few bytes and as low a latency, and is better on one); "
        f"{len(data['failed'])} failed. Every trial: pareto.json.",
        "",
    ]
    header = ["trial", *varying, f"val {metric}", "bytes", "latency ms", "within budget"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in data["front"]:
        r, p = by_name[name]
        cells = [f"[{name}]({name}/report.md)", *(_override_value(p.get(k)) for k in varying)]
        cells += [f"{r[metric]:.4f}", _cell(r["bytes"], "{:,}"), _cell(r["latency_ms"], "{:.3f}")]
        lines.append("| " + " | ".join([*cells, _cell(r.get("within_budget"))]) + " |")
    if data["plot"]:
        lines += ["", f"![validation {metric} against size]({data['plot']})"]
    lines += ["", *_best_lines(data)]
    if data["failed"]:
        lines += ["", "## Failed trials", ""]
        for name in data["failed"]:
            r, p = by_name[name]
            lines.append(f"- `{name}` ({r['failed']}): " + " ".join(f"{k}={p[k]}" for k in varying if k in p))
    if data.get("test"):
        lines += ["", *_test_lines(data["test"], metric)]
    return "\n".join(lines) + "\n"


def _best_lines(data: dict[str, Any]) -> list[str]:
    metric, best, closest, limits = data["metric"], data["best"], data["closest"], data["limits"]
    lines = ["## Best within the budget", ""]
    if not limits:
        return [*lines, "No budget was set (budget.*): no single model is picked; choose one from the front."]
    quality = data["quality_limit"]
    bound = f"; validation {metric} limit: {quality:.4f}" if quality is not None else ""
    lines.append(f"Budget: {describe(limits)}{bound}.")
    if best:
        lines += [
            "",
            f"Trial `{best['trial']}`, model `{best['model']}`: {_figure_text(best, metric)}.",
            f"- trial folder: {best['folder']}",
            f"- file: {best.get('file')}",
        ]
    elif closest:
        over = ", ".join(f"{k} by {v:.4g}" for k, v in closest["misses"].items())
        lines += [
            "",
            f"No trial meets the budget. Closest: trial `{closest['trial']}`, model `{closest['model']}`: "
            f"{_figure_text(closest, metric)}; over {over}.",
            f"- trial folder: {closest['folder']}",
        ]
    else:
        lines += ["", "No trial's model was measured against the budget."]
    return lines


def _test_lines(test: dict[str, Any], metric: str) -> list[str]:
    lines = [
        "## Test set: the best model only",
        "",
        f"Trial `{test['trial']}` rerun as one run with report.split=test in {test['run_dir']} "
        f"(report.json and report.md there; its console: rerun.log):",
        "",
        f"    {test['command']}",
        "",
        markdown_table([test["row"]]),
        "",
    ]
    if test["same_model"]:
        same = (
            f"The rerun's validation {metric}, {test['val_rerun']:.4f}, equals the trial's: the same model was rebuilt."
        )
        return [*lines, same]
    return [
        *lines,
        f"**WARNING: the rerun's model `{test['model_rerun']}` with validation {metric} {test['val_rerun']:.4f} is not "
        f"the trial's (`{test['model']}`, {test['val_trial']:.4f}): the rerun did not rebuild the trial's model, "
        "and these test figures are not that model's.**",
    ]


def write_plot(path: Path, data: dict[str, Any]) -> bool:
    """Draw pareto.png (see `plot_front`); a picture that cannot be drawn is logged, never fatal. False when none
    was written."""
    try:
        fig = plot_front(data)
        if fig is None:
            return False
        save(fig, path)
        return True
    except Exception:  # noqa: BLE001
        log.warning("Could not draw %s", path, exc_info=True)
        return False


def plot_front(data: dict[str, Any]) -> Figure | None:
    """Validation accuracy (perplexity) against bytes on disk, log x: every trial in grey, the front joined in
    order of size and coloured by latency, the best trial within the budget ringed, the budget's max_bytes
    (vertical) and quality limit (horizontal) as red lines. None when no trial has both figures."""
    metric, records, limits = data["metric"], data["trials"], data["limits"]
    points = [r for r in records if _number(r.get("bytes")) and r["bytes"] > 0 and _number(r.get(metric))]
    if not points:
        return None
    fig = _figure(7.8, 4.8)
    ax = fig.add_subplot()
    ax.scatter([r["bytes"] for r in points], [r[metric] for r in points], s=26, color="0.72", zorder=2, label="trial")
    front = [r for name in data["front"] for r in points if r["trial"] == name]  # in order of size
    if front:
        xs, ys = [r["bytes"] for r in front], [r[metric] for r in front]
        ax.plot(xs, ys, color="0.25", lw=1.2, zorder=3)
        dots = ax.scatter(
            xs,
            ys,
            c=[r["latency_ms"] for r in front],
            cmap="viridis",
            s=70,
            edgecolor="black",
            lw=0.8,
            zorder=4,
            label="Pareto front",
        )
        fig.colorbar(dots, ax=ax, shrink=0.9).set_label("latency, batch 1 (ms)")
    if data["best"]:
        best = data["best"]
        ax.scatter(
            best["bytes"],
            best[metric],
            s=260,
            facecolor="none",
            edgecolor="red",
            lw=2,
            zorder=5,
            label=f"best within budget ({best['trial']})",
        )
    sizes = [r["bytes"] for r in points]
    if "max_bytes" in limits:
        sizes.append(limits["max_bytes"])
        ax.axvline(sizes[-1], color="red", ls="--", lw=1.2, label=f"max_bytes ({human_bytes(sizes[-1])})")
    if data["quality_limit"] is not None:
        ax.axhline(
            data["quality_limit"], color="red", ls=":", lw=1.4, label=f"{metric} limit ({data['quality_limit']:.4g})"
        )
    _set_log_axis(ax.xaxis, sizes, human_bytes)
    ax.set_xlabel("size on disk")
    ax.set_ylabel(f"validation {metric} ({'higher' if metric == 'accuracy' else 'lower'} is better)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.08)
    fig.legend(loc="outside right lower", fontsize=8, frameon=False)
    heading = f"{Path(data['sweep']).name}: {len(front)} of {len(records)} trials on the Pareto front"
    fig.suptitle(heading + (f", {len(data['failed'])} failed" if data["failed"] else ""), fontsize=11)
    return fig


# -- the test set: the best model only -------------------------------------------------------------


#: SLURM launcher setting -> srun option (the rerun of the best trial runs as one job with the trials' resources)
SRUN_OPTIONS = {
    "partition": "--partition",
    "account": "--account",
    "qos": "--qos",
    "timeout_min": "--time",
    "gpus_per_node": "--gpus-per-node",
    "cpus_per_task": "--cpus-per-task",
    "mem_gb": "--mem",
}


def srun_prefix(launcher: Any) -> list[str]:
    """`srun` with the sweep's SLURM settings when its launcher is SLURM's (the sweep ended on the machine it
    was started from, often a login node: the rerun goes to a compute node as the trials did); else nothing."""
    if "slurm" not in str(launcher.get("_target_", "")).lower():
        return []
    units = {"timeout_min": "", "mem_gb": "G"}
    options = [f"{flag}={launcher[key]}{units.get(key, '')}" for key, flag in SRUN_OPTIONS.items()
               if launcher.get(key) is not None]  # fmt: skip
    return ["srun", "--nodes=1", "--ntasks=1", *options]


def task_command(config: DictConfig) -> list[str]:
    """The command that reruns one trial of the search in `config`: the module of its primary config
    (`hydra.job.config_name`, else `task_name`: train -> distill.train, lm -> distill.llm.train)."""
    name = OmegaConf.select(config, "hydra.job.config_name", default=None) or config.get("task_name")
    if name not in MODULES:
        raise DistillError(f"cannot tell which command ran the search (config '{name}'; known: {', '.join(MODULES)})")
    return [sys.executable, "-m", MODULES[name]]


def _rerun(override: str) -> bool:
    key = parse_override(override)[0]
    return REDACTED not in override and not any(key == k or key.startswith(f"{k}.") for k in NOT_RERUN)


def rerun_command(sweep_dir: Path, trial: Trial, command: Sequence[str]) -> list[str]:
    """`command` with the trial's overrides (the `hparams_search=` config's settings stay; its sweeper's
    overrides and redacted credentials, which the rerun takes from the environment, go), `hydra.mode=RUN` (one
    run, not a search), `report.split=test` and `hydra.run.dir=<sweep dir>/best`."""
    if any(REDACTED in o for o in trial.overrides):
        log.warning(
            "Overrides of %s hold credentials (redacted): the rerun takes them from the environment", trial.name
        )
    run_dir = (sweep_dir / BEST_DIR).resolve()
    kept = list(filter(_rerun, trial.overrides))
    return [*command, *kept, "hydra.mode=RUN", "report.split=test", f"hydra.run.dir={run_dir}"]


def _rerun_entry(trial: Trial, report: dict[str, Any], run_dir: Path, command: Sequence[str]) -> dict[str, Any]:
    """What pareto.json and pareto.md say of the rerun: its report's row of the trial's model (test figures) and
    whether its validation figure is the trial's (the same model rebuilt)."""
    metric = metric_of([trial])
    search = report.get("search") or {}
    model, val_rerun, val_trial = search.get("model"), search.get(metric), trial.search[metric]
    row = next((r for r in report.get("models", []) if r.get("model") == model), None)
    if row is None:
        raise DistillError(f"{run_dir / 'report.json'} has no row of the model '{model}' (its search entry's)")
    same = (
        model == trial.search["model"]
        and _number(val_rerun)
        and math.isclose(val_rerun, val_trial, rel_tol=SAME_FIGURE)
    )
    return {
        "trial": trial.name,
        "run_dir": str(run_dir),
        "command": shlex.join(command),
        "model": trial.search["model"],
        "model_rerun": model,
        "val_trial": val_trial,
        "val_rerun": val_rerun,
        "same_model": same,
        "split": "test",
        metric: row.get(metric),
        "row": row,
    }


def test_best(sweep_dir: Path, trial: Trial, command: Sequence[str]) -> dict[str, Any]:
    """Rerun `trial` as one run on the test split into `<sweep dir>/best` (`rerun_command`; its console in
    best/rerun.log), add its test figures to pareto.json and pareto.md (written by `write_front` before), and
    return them. A rerun that fails raises `DistillError`."""
    run_dir = sweep_dir / BEST_DIR
    run_dir.mkdir(exist_ok=True)
    args = rerun_command(sweep_dir, trial, command)
    log.info("Rerunning trial %s on the test split: %s", trial.name, shlex.join(args))
    with open(run_dir / "rerun.log", "w") as console:
        code = subprocess.run(args, stdout=console, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0 or not (run_dir / "report.json").is_file():
        raise DistillError(f"the rerun of trial {trial.name} failed (exit code {code}); see {run_dir / 'rerun.log'}")
    entry = _rerun_entry(trial, json.loads((run_dir / "report.json").read_text()), run_dir, args)
    data = json.loads((sweep_dir / "pareto.json").read_text())
    write_files(sweep_dir, {**data, "test": entry})
    return entry


# -- W&B and the callback --------------------------------------------------------------------------


def wandb_node(config: DictConfig) -> DictConfig | None:
    """The W&B logger of the `logger` group, if the sweep's config has one."""
    nodes = (config.get("logger") or {}).values()
    return next((n for n in nodes if isinstance(n, DictConfig) and "Wandb" in str(n.get("_target_", ""))), None)


def log_wandb(config: DictConfig, sweep_dir: Path, data: dict[str, Any]) -> bool:
    """When the sweep logs to W&B: the front's table (`pareto_front`) and pareto.png (`plots/pareto`) in one W&B run
    of job_type "pareto", in the sweep's project and group; offline without an API key, as every run of the
    project. False when the sweep does not log to W&B."""
    node = wandb_node(config)
    if node is None:
        return False
    import wandb

    from distill.assembly import _wandb_key_available
    from distill.report import _finish_wandb

    if not _wandb_key_available():
        os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(
        project=node.get("project"),
        entity=node.get("entity"),
        group=node.get("group") or sweep_dir.name,
        job_type="pareto",
        name=f"pareto {sweep_dir.name}",
        dir=str(sweep_dir),
        settings=wandb.Settings(silent=True, console="off"),
    )
    metric = data["metric"]
    columns = ["trial", "model", f"val_{metric}", *SIZE_OBJECTIVES, "within_budget", "on_front", "file"]
    keys = ["trial", "model", metric, *SIZE_OBJECTIVES, "within_budget", "on_front", "file"]
    rows = [[r.get(k) for k in keys] for r in data["trials"] if "failed" not in r]
    logged: dict[str, Any] = {"pareto_front": wandb.Table(columns=columns, data=rows)}
    if data["plot"]:
        logged["plots/pareto"] = wandb.Image(str(sweep_dir / data["plot"]))
    run.log(logged)
    run.summary.update({"front": data["front"], "best_trial": (data["best"] or {}).get("trial")})
    if data.get("test"):
        run.summary[f"best_test_{metric}"] = data["test"][metric]
    _finish_wandb(run, sweep_dir)
    return True


def _log_best(data: dict[str, Any]) -> None:
    metric, best, closest = data["metric"], data["best"], data["closest"]
    if best:
        log.info("Best within the budget: trial %s, %s: %s", best["trial"], best["model"], _figure_text(best, metric))
    elif closest:
        log.warning("No trial meets the budget (%s); closest: trial %s", describe(data["limits"]), closest["trial"])
    else:
        log.info("No budget set: no single best model; choose one from the front")


def _log_test(test: dict[str, Any], metric: str) -> None:
    log.info("Test %s of the best model (trial %s, %s): %.4f", metric, test["trial"], test["model"], test[metric])
    if not test["same_model"]:
        log.error(
            "THE RERUN IS NOT THE TRIAL'S MODEL: %s with validation %s %.4f, the trial %s with %.4f; its test "
            "figures are not the trial model's (see %s)",
            test["model_rerun"],
            metric,
            test["val_rerun"],
            test["model"],
            test["val_trial"],
            test["run_dir"],
        )


class ParetoFront(Callback):
    """Hydra callback: when a search ends, write its Pareto front into the sweep folder (pareto.json, .md, .png),
    rerun its best trial within the budget on the test split (with `test`), and log the front to W&B when the
    sweep's loggers include W&B. A step that fails is logged as an error; the sweep ends as it would have."""

    def __init__(self, test: bool = True) -> None:
        self.test = test

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        data = _step(f"write the Pareto front of {sweep_dir}", self._front, sweep_dir)
        if data is None:
            return
        if self.test and data["best"]:
            data["test"] = _step("test the best trial", self._test, config, sweep_dir, data)
        _step("log the Pareto front to W&B", log_wandb, config, sweep_dir, data)

    @staticmethod
    def _test(config: DictConfig, sweep_dir: Path, data: dict[str, Any]) -> dict[str, Any] | None:
        trial = next(t for t in read_trials(sweep_dir) if t.name == data["best"]["trial"])
        launcher = OmegaConf.select(config, "hydra.launcher") or {}
        command = [*srun_prefix(launcher), *task_command(config)]  # on SLURM: one job, as the trials ran
        test = test_best(sweep_dir, trial, command)
        _log_test(test, data["metric"])
        return test

    @staticmethod
    def _front(sweep_dir: Path) -> dict[str, Any] | None:
        trials = read_trials(sweep_dir)
        if not any(t.search for t in trials):
            log.warning("No trial of %s has a search entry in its report.json: no Pareto front", sweep_dir)
            return None
        data = write_front(sweep_dir, trials)
        log.info(
            "Pareto front: %d of %d trials (%d failed), written to %s",
            len(data["front"]),
            len(trials),
            len(data["failed"]),
            sweep_dir / "pareto.md",
        )
        _log_best(data)
        return data


def _step(what: str, step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)`, or None, logged as an error, when it raises: the sweep's end goes on."""
    try:
        return step(*args)
    except Exception:  # noqa: BLE001
        log.error("Could not %s", what, exc_info=True)
        return None
