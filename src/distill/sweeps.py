"""What a multirun leaves behind besides its jobs' folders: one table of every job's overrides and results."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from distill.atomic import write_text

log = logging.getLogger(__name__)

RESULT_KEYS = ("student_accuracy", "student_val_accuracy", "baseline_accuracy", "teacher_accuracy", "gap_closed")
LM_RESULT_KEYS = ("student_perplexity", "student_val_perplexity", "baseline_perplexity", "teacher_perplexity")


def job_overrides(job_dir: Path) -> list[str]:
    """The command-line overrides of one job of a sweep (`.hydra/overrides.yaml`)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])] if overrides_file.is_file() else []


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job of a sweep: its overrides, and its results from report.json (or why there are none)."""
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(job_overrides(job_dir))}
    report_file = job_dir / "report.json"
    if not report_file.is_file():
        row["status"] = "no report"
        return row
    report = json.loads(report_file.read_text())
    models = {m["model"]: m for m in report.get("models", [])}
    # Classifiers are compared by accuracy (the best teacher: the highest), language models by perplexity (the lowest).
    metric, best = ("accuracy", max) if any("accuracy" in m for m in models.values()) else ("perplexity", min)
    teachers = [
        m[metric] for name, m in models.items() if m.get("role", name.split(":")[0]) == "teacher" and m.get(metric)
    ]
    row.update(
        {
            "status": f"compression failed at {report['failed']['stage']}" if report.get("failed") else "ok",
            f"student_{metric}": models.get("student", {}).get(metric),
            f"student_val_{metric}": report.get(f"student_val_{metric}"),
            f"baseline_{metric}": models.get("baseline", {}).get(metric),
            f"teacher_{metric}": best(teachers) if teachers else None,
            "gap_closed": report.get("summary", {}).get(
                "gap_closed", report.get("summary", {}).get(f"{metric}_gap_closed")
            ),
        }
    )
    compressed = [name for name, m in models.items() if m.get("role", name.split(":")[0]) in ("compressed", "compress")]
    if compressed:
        final = models[compressed[-1]]
        row.update(
            {"final_stage": compressed[-1], f"final_{metric}": final.get(metric), "final_bytes": final.get("bytes")}
        )
    return row


def job_number(path: Path) -> int | None:
    """The job number a sweep's job folder starts with (`<num>_<job id>`); None for any other folder."""
    head = path.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep, by job number (not other runs kept there, such as a search's best/)."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() and job_number(p) is not None]
    return sorted(jobs, key=lambda p: (job_number(p), p.name))


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job folder of `sweep_dir`; writes summary.md and summary.csv there."""
    jobs = job_folders(sweep_dir)
    rows = [job_row(p) for p in jobs]
    # Overrides shared by every job go in the heading; each row keeps what sets it apart.
    split = [r["overrides"].split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if split else []
    for row, overrides in zip(rows, split, strict=True):
        row["overrides"] = " ".join(o for o in overrides if o not in common)
    columns = ["job", "overrides", "status", *RESULT_KEYS, *LM_RESULT_KEYS, "final_stage", "final_accuracy"]
    columns += ["final_perplexity", "final_bytes"]
    columns = [c for c in columns if any(c in r for r in rows)]

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    heading = f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n"
    if common:
        heading += f"Overrides common to every job: {' '.join(common)}\n\n"
    picture = (
        "\n![the student against what the sweep varied](summary.png)\n" if plot_sweep(sweep_dir, jobs, rows) else ""
    )
    write_text(sweep_dir / "summary.md", heading + "\n".join(md) + "\n" + picture)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "summary.csv", buffer.getvalue())
    return rows


def plot_sweep(sweep_dir: Path, jobs: list[Path], rows: list[dict[str, Any]]) -> bool:
    """summary.png: the student's test result against the parameters that differ between jobs (see
    `distill.plots.plot_sweep`), baseline and teacher for reference; jobs without a result are named, not
    drawn. A picture that cannot be drawn is logged, never fatal to the summary. False when none was written."""
    from distill.plots import plot_sweep as draw
    from distill.plots import save, swept_parameters

    try:
        params, varying = swept_parameters([job_overrides(job) for job in jobs])
        metric = "perplexity" if any(r.get("student_perplexity") is not None for r in rows) else "accuracy"
        results = [r.get(f"student_{metric}") for r in rows]
        references = {name: [r.get(f"{name}_{metric}") for r in rows] for name in ("baseline", "teacher")}
        references = {name: values for name, values in references.items() if any(v is not None for v in values)}
        failed = [r["job"] for r, result in zip(rows, results, strict=True) if result is None]
        fig = draw(params, varying, results, f"student test {metric}", references, f"Sweep {sweep_dir.name}", failed)
        if fig is None:
            return False
        save(fig, sweep_dir / "summary.png")
        return True
    except Exception:  # noqa: BLE001
        log.warning("Could not draw %s", sweep_dir / "summary.png", exc_info=True)
        return False


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, write the table of its jobs into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize_sweep(sweep_dir)
        failed = [r["job"] for r in rows if r["status"] != "ok"]
        log.info("Sweep summary of %d jobs written to %s", len(rows), sweep_dir / "summary.md")
        if failed:
            log.warning("Jobs without a complete report: %s", ", ".join(failed))
