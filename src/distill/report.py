"""The report: every model measured on the same test set and machine, then written and logged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from distill.atomic import write_text
from distill.budget import budget_lines

log = logging.getLogger(__name__)

COLUMNS = {  # key: (header, format)
    "model": ("model", "{}"),
    "accuracy": ("test acc", "{:.4f}"),
    "macro_f1": ("macro-F1", "{:.4f}"),
    "perplexity": ("test ppl", "{:.3f}"),
    "val_perplexity": ("val ppl", "{:.3f}"),
    "rare_perplexity": ("test ppl, rarest 10% of tokens", "{:.3f}"),
    "agreement": ("agree w/ teacher", "{:.4f}"),
    "exact_match": ("exact match", "{:.3f}"),
    "rouge_l": ("ROUGE-L", "{:.3f}"),
    "exact_match_sampled": ("exact match (sampled)", "{:.3f}"),
    "rouge_l_sampled": ("ROUGE-L (sampled)", "{:.3f}"),
    "calibration_error": ("ECE", "{:.4f}"),
    "worst_class": ("worst class", "{}"),
    "worst_class_accuracy": ("worst class acc", "{:.4f}"),
    "parameters": ("params", "{:,}"),
    "trainable_parameters": ("trainable", "{:,}"),
    "nonzero_parameters": ("non-zero params", "{:,}"),
    "bytes": ("bytes on disk", "{:,}"),
    "flops": ("FLOPs/sample", "{:,}"),
    "tokens_per_second": ("tokens/s", "{:,.0f}"),
    "meets_budget": ("within budget", "{}"),
}


LATENCY_BEFORE = ("flops", "tokens_per_second")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    latency = sorted(
        {k for r in rows for k in r if k.startswith("latency_ms_batch_")}, key=lambda k: int(k.rsplit("_", 1)[1])
    )
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    after = [k for k in keys if k in LATENCY_BEFORE]  # latency columns go in before these
    cut = keys.index(after[0]) if after else len(keys)
    return keys[:cut] + latency + keys[cut:]


def _header(key: str) -> str:
    return f"latency ms (batch {key.rsplit('_', 1)[1]})" if key.startswith("latency_ms_batch_") else COLUMNS[key][0]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.startswith("latency_ms_batch_"):
        return f"{value:.3f}"
    return COLUMNS[key][1].format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = _columns(rows)
    lines = ["| " + " | ".join(_header(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def per_class_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The classes, and the rows that report an accuracy per class (`per_class_accuracy`)."""
    models = [r for r in rows if isinstance(r.get("per_class_accuracy"), dict)]
    classes = list(dict.fromkeys(c for r in models for c in r["per_class_accuracy"]))
    return classes, models


def lost_classes(rows: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """The classes on which the distilled student falls furthest below the (best) teacher, most first: up to
    `top` of them, each `{"class", "teacher", "student", "drop"}`; none when the student loses none."""
    by_name = {r["model"]: r for r in rows}
    teachers = [r for r in rows if r.get("role") == "teacher" and isinstance(r.get("per_class_accuracy"), dict)]
    student = by_name.get("student", {}).get("per_class_accuracy")
    if not teachers or not isinstance(student, dict):
        return []
    teacher = max(teachers, key=lambda r: r.get("accuracy", 0.0))["per_class_accuracy"]
    drops = [
        {"class": c, "teacher": teacher[c], "student": student[c], "drop": teacher[c] - student[c]}
        for c in teacher
        if c in student and teacher[c] > student[c]
    ]
    return sorted(drops, key=lambda d: -d["drop"])[:top]


def per_class_markdown(rows: list[dict[str, Any]], lost: list[dict[str, Any]]) -> str:
    """report.md's section on rare behaviour: each model's accuracy on each class, and the classes lost most."""
    classes, models = per_class_rows(rows)
    if not models:
        return ""
    lines = ["## Accuracy per class", "", "| class | " + " | ".join(r["model"] for r in models) + " |"]
    lines.append("|---|" + "---|" * len(models))
    for c in classes:
        cells = [r["per_class_accuracy"].get(c) for r in models]
        lines.append(f"| {c} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in cells) + " |")
    if lost:
        lines += ["", "Classes the student lost most against the teacher:", ""]
        lines += [f"- {d['class']}: {d['teacher']:.4f} → {d['student']:.4f} (−{d['drop']:.4f})" for d in lost]
    elif any(r.get("role") == "teacher" for r in models) and any(r["model"] == "student" for r in models):
        lines += ["", "The student is at least as accurate as the teacher on every class."]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], title: str, console: Any = None) -> None:
    """The table on stdout (or `console`, a rich Console): fitted to a terminal's width (short headers, then
    the least telling columns left out and named); without a terminal in full and without colour codes."""
    from distill.console import print_report_table

    print_report_table(rows, title, console)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy (perplexity) against bytes on disk and against batch-1 latency, one legend entry per model."""
    from distill.plots import plot_report, save

    save(plot_report(rows), path)


def plot_curves(histories: dict[str, list[dict[str, float]]] | None, path: Path) -> bool:
    """Every stage's training loss (and loss terms) and validation metric per epoch; False when nothing was recorded."""
    from distill.plots import write_curves

    return write_curves(histories, path) is not None


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
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the table; write report.json, report.md and report.png to `out`; send them to the loggers.

    `extra` entries go to the top level of report.json (e.g. `student_val_accuracy`); `params` (the
    run's chosen options, `distill.tracking.run_params`) are TensorBoard's hparams.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or {}
    report = {"title": title, "models": rows, "summary": summary, **(extra or {})}
    lost = lost_classes(rows)
    if lost:
        report["lost_classes"] = lost
    if failure:
        report["failed"] = failure
    plot(rows, out / "report.png")
    curves = plot_curves(histories, out / "curves.png")  # training curves of every stage, when recorded
    summary = "".join(f"- {k.replace('_', ' ')}: {v:.4f}\n" for k, v in report["summary"].items())
    if failure:
        summary += f"- compression stopped: stage '{failure['stage']}' failed: {failure['error']}\n"
    for line in budget_lines(report.get("budget") or {}):
        summary += line + "\n"
        log.info("%s", line[2:])
    body = f"{markdown_table(rows)}\n\n{summary}"  # report.md's, and TensorBoard's text
    classes = per_class_markdown(rows, lost)
    if classes:
        body += f"\n{classes}"
    _write_atomic(
        out / "report.md",
        f"# {title}\n\n{body}\n![accuracy vs size](report.png)\n"
        + ("\n![training curves](curves.png)\n" if curves else ""),
    )
    _write_atomic(out / "report.json", json.dumps(report, indent=2))
    print_table(rows, title)
    for k, v in report["summary"].items():
        log.info("%s: %.4f", k.replace("_", " "), v)
    log.info("Report written to %s", out / "report.json")
    _log_to_loggers(report, f"## {title}\n\n{body}", out, loggers, params or {"task": title})
    return report


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The run's figures for TensorBoard's hparams: the student's, the baseline's and the best teacher's
    test metric, the last compressed model's, the summary (gap closed, ...) and the validation metric."""
    rows = report["models"]
    metric, best = ("accuracy", max) if any("accuracy" in r for r in rows) else ("perplexity", min)
    by_name = {r["model"]: r for r in rows}
    out: dict[str, float] = {}
    for name in ("student", "baseline"):
        if isinstance(by_name.get(name, {}).get(metric), (int, float)):
            out[f"{name}_{metric}"] = by_name[name][metric]
    teachers = [r[metric] for r in rows if r.get("role") == "teacher" and isinstance(r.get(metric), (int, float))]
    if teachers:
        out[f"teacher_{metric}"] = best(teachers)
    if isinstance(by_name.get("student", {}).get("bytes"), (int, float)):
        out["student_bytes"] = by_name["student"]["bytes"]
    compressed = [r for r in rows if r.get("role") == "compressed"]
    if compressed:
        out.update({f"final_{k}": compressed[-1][k] for k in (metric, "bytes") if k in compressed[-1]})
    out.update(report.get("summary") or {})
    out.update({k: v for k, v in report.items() if k.startswith("student_val_") and isinstance(v, (int, float))})
    return {f"hparams/{k}": float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _png(path: Path) -> Any:
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]  # HWC floats in [0, 1], without alpha


def _log_to_loggers(report: dict[str, Any], text: str, out: Path, loggers: list[Any], params: dict[str, Any]) -> None:
    """Send the report to the loggers: `report/*` scalars to all; the table (`report_table`) and the
    plots (`plots/report`, `plots/curves`) to W&B and TensorBoard; TensorBoard's hparams with the
    run's real figures. Then each logger is finished (W&B: one line says where the run is)."""
    rows, summary = report["models"], report["summary"]
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
    images = {key: out / name for key, name in (("plots/report", "report.png"), ("plots/curves", "curves.png"))}
    images = {key: path for key, path in images.items() if path.is_file()}
    for logger in loggers:
        kind = type(logger).__name__
        logger.log_metrics(metrics)
        if kind == "WandbLogger":
            keys = _columns(rows)
            logger.log_table(key="report_table", columns=keys, data=[[r.get(k) for k in keys] for r in rows])
            classes, models = per_class_rows(rows)
            if models:
                logger.log_table(
                    key="per_class_accuracy", columns=["class", *(r["model"] for r in models)],
                    data=[[c, *(r["per_class_accuracy"].get(c) for r in models)] for c in classes],
                )  # fmt: skip
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)])
        elif kind == "TensorBoardLogger":
            writer = logger.experiment
            writer.add_text("report_table", text, 0)
            for key, path in images.items():
                writer.add_image(key, _png(path), 0, dataformats="HWC")
            logger.log_hyperparams(params, metrics=headline(report))
        logger.save()
        logger.finalize("success")
        if kind == "WandbLogger":
            _finish_wandb(logger.experiment, out)


def _finish_wandb(run: Any, out: Path) -> None:
    """Finish the W&B run (it writes its summary; the next run starts a new one) and say where it is."""
    if not callable(getattr(run, "finish", None)):
        return
    settings = getattr(run, "settings", None)
    offline = bool(getattr(settings, "_offline", False))
    sync_dir = getattr(settings, "sync_dir", None)
    url = None if offline else getattr(run, "url", None)
    files = getattr(run, "dir", None)  # what lies here is uploaded with the run
    for path in sorted(out.glob("*.log")) if files else []:  # the console (W&B does not capture it)
        try:
            shutil.copy(path, Path(files) / path.name)
        except OSError as err:  # the log is a convenience, the run is what matters
            log.debug("could not copy %s into the W&B run: %s", path, err)
    run.finish()
    if offline and sync_dir:
        log.info("W&B: logged offline to %s; upload with: wandb sync %s", sync_dir, sync_dir)
    elif url:
        log.info("W&B: %s", url)
