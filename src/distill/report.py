"""The report: every model measured on the same test set and machine, then written and logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.atomic import atomic_write, write_text

log = logging.getLogger(__name__)

COLUMNS = {  # key: (header, format)
    "model": ("model", "{}"),
    "accuracy": ("test acc", "{:.4f}"),
    "perplexity": ("test ppl", "{:.3f}"),
    "val_perplexity": ("val ppl", "{:.3f}"),
    "agreement": ("agree w/ teacher", "{:.4f}"),
    "calibration_error": ("ECE", "{:.4f}"),
    "parameters": ("params", "{:,}"),
    "trainable_parameters": ("trainable", "{:,}"),
    "nonzero_parameters": ("non-zero params", "{:,}"),
    "bytes": ("bytes on disk", "{:,}"),
    "flops": ("FLOPs/sample", "{:,}"),
}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    latency = sorted(
        {k for r in rows for k in r if k.startswith("latency_ms_batch_")}, key=lambda k: int(k.rsplit("_", 1)[1])
    )
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    return keys[:-1] + latency + keys[-1:]


def _header(key: str) -> str:
    return f"latency ms (batch {key.rsplit('_', 1)[1]})" if key.startswith("latency_ms_batch_") else COLUMNS[key][0]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key.startswith("latency_ms_batch_"):
        return f"{value:.3f}"
    return COLUMNS[key][1].format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = _columns(rows)
    lines = ["| " + " | ".join(_header(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    keys = _columns(rows)
    for k in keys:
        table.add_column(_header(k), justify="left" if k == "model" else "right")
    for r in rows:
        table.add_row(*(_cell(k, r.get(k)) for k in keys))
    console = Console()
    if not console.is_terminal:  # logs and CI: no terminal width to respect
        console = Console(width=200)
    console.print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against bytes on disk and against batch-1 latency (log scales), one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = next((k for k in _columns(rows) if k.startswith("latency_ms_batch_")), None)
    axes_keys = [("bytes", "bytes on disk")] + ([(latency, _header(latency))] if latency else [])
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6 * len(axes_keys), 4), dpi=110, squeeze=False)
    metric = "accuracy" if all("accuracy" in r for r in rows) else "perplexity"
    for ax, (key, label) in zip(axes[0], axes_keys, strict=True):
        for r in rows:
            ax.scatter(r[key], r[metric], s=40)
            ax.annotate(r["model"], (r[key], r[metric]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{metric} vs. size and latency")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _write_atomic(path: Path, text: str) -> None:
    write_text(path, text)


def publish_report(
    rows: list[dict[str, Any]],
    out: Path,
    loggers: list[Any],
    title: str,
    failure: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    summary: dict[str, float] | None = None,
    histories: dict[str, list[dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Print the table; write report.json, report.md and report.png to `out`; send them to the loggers.

    `extra` entries go to the top level of report.json (e.g. `student_val_accuracy`).
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or {}
    report = {"title": title, "models": rows, "summary": summary, **(extra or {})}
    if failure:
        report["failed"] = failure
    plot(rows, out / "report.png")
    summary = "".join(f"- {k.replace('_', ' ')}: {v:.4f}\n" for k, v in report["summary"].items())
    if failure:
        summary += f"- compression stopped: stage '{failure['stage']}' failed: {failure['error']}\n"
    _write_atomic(
        out / "report.md", f"# {title}\n\n{markdown_table(rows)}\n\n{summary}\n![accuracy vs size](report.png)\n"
    )
    _write_atomic(out / "report.json", json.dumps(report, indent=2))
    print_table(rows, title)
    for k, v in report["summary"].items():
        log.info("%s: %.4f", k.replace("_", " "), v)
    log.info("Report written to %s", out / "report.json")
    _log_to_loggers(rows, report["summary"], out / "report.png", loggers)
    return report


def _log_to_loggers(rows: list[dict[str, Any]], summary: dict[str, float], image: Path, loggers: list[Any]) -> None:
    metrics = {f"report/{r['model']}/{k}": v for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    metrics.update(  # what each compression stage said of itself (sparsity, parity error, ...)
        {
            f"report/{r['model']}/stage/{k}": v
            for r in rows
            for k, v in (r.get("stage") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    metrics.update({f"report/{k}": v for k, v in summary.items()})
    for logger in loggers:
        logger.log_metrics(metrics)
        if type(logger).__name__ == "WandbLogger":
            keys = _columns(rows)
            logger.log_table(key="report", columns=keys, data=[[r.get(k) for k in keys] for r in rows])
            logger.log_image(key="report_plot", images=[str(image)])
        logger.save()
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()  # writes the run summary; the next run starts a new W&B run
