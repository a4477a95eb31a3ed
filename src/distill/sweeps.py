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

log = logging.getLogger(__name__)

RESULT_KEYS = ("student_accuracy", "student_val_accuracy", "baseline_accuracy", "teacher_accuracy", "gap_closed")


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job of a sweep: its overrides, and its results from report.json (or why there are none)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides or [])}
    report_file = job_dir / "report.json"
    if not report_file.is_file():
        row["status"] = "no report"
        return row
    report = json.loads(report_file.read_text())
    models = {m["model"]: m for m in report.get("models", [])}
    teachers = [m["accuracy"] for name, m in models.items() if m.get("role", name.split(":")[0]) == "teacher"]
    row.update(
        {
            "status": f"compression failed at {report['failed']['stage']}" if report.get("failed") else "ok",
            "student_accuracy": models.get("student", {}).get("accuracy"),
            "student_val_accuracy": report.get("student_val_accuracy"),
            "baseline_accuracy": models.get("baseline", {}).get("accuracy"),
            "teacher_accuracy": max(teachers) if teachers else None,
            "gap_closed": report.get("summary", {}).get("gap_closed"),
        }
    )
    compressed = [name for name, m in models.items() if m.get("role", name.split(":")[0]) in ("compressed", "compress")]
    if compressed:
        final = models[compressed[-1]]
        row.update({"final_stage": compressed[-1], "final_accuracy": final["accuracy"], "final_bytes": final["bytes"]})
    return row


def _job_number(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (10**9, path.name)


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job folder of `sweep_dir`; writes summary.md and summary.csv there."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_number)
    rows = [job_row(p) for p in jobs]
    # Overrides shared by every job go in the heading; each row keeps what sets it apart.
    split = [r["overrides"].split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if split else []
    for row, overrides in zip(rows, split, strict=True):
        row["overrides"] = " ".join(o for o in overrides if o not in common)
    columns = ["job", "overrides", "status", *RESULT_KEYS, "final_stage", "final_accuracy", "final_bytes"]
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
    (sweep_dir / "summary.md").write_text(heading + "\n".join(md) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (sweep_dir / "summary.csv").write_text(buffer.getvalue())
    return rows


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
