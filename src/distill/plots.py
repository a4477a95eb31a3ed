"""The pictures of a run and of a sweep: report.png, curves.png and summary.png.

Every function builds a `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no global backend
switch, nothing kept open) and returns it, so tests can measure what it draws; `save` writes a figure
atomically. Labels never sit on the data: models are told apart by a legend (one colour and marker
per model, shared by both panels of report.png), log axes get a few ticks in human units
(`64 KB`, `1.3 MB`, `0.05 ms`), and tick labels that would collide are turned or thinned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, ever: runs go to clusters and CI

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from distill.atomic import atomic_write  # noqa: E402

log = logging.getLogger(__name__)

DPI = 120
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
TERM_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999"]
Rows = list[dict[str, Any]]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path | str) -> Path:
    """Write `fig` as a PNG to `path`, atomically (a reader sees the old picture or the new one)."""
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------- units


def human_bytes(n: float) -> str:
    """`512 B`, `64 KB`, `1.3 MB` (decimal units, as file sizes on disk are usually quoted)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{_short(n / scale)} {unit}"
    return f"{_short(n)} B"


def human_ms(ms: float) -> str:
    """`0.05 ms`, `2 ms`, `1.5 s`; below a microsecond, `µs`."""
    if ms >= 1000:
        return f"{_short(ms / 1000)} s"
    if 0 < ms < 0.001:
        return f"{_short(ms * 1000)} µs"
    return f"{_short(ms)} ms"


def _short(x: float) -> str:
    """Two significant digits at most, no trailing zeros: 1.3, 12, 0.05, 150."""
    if x == 0:
        return "0"
    digits = max(0, 1 - math.floor(math.log10(abs(x))))
    text = f"{x:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def log_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """A few round values between `lo` and `hi` (1, 1.5, 2, 2.5, 3 ... 8 × 10^k, or the first thinner set
    that gives at most `most`: 1, 2, 5; 1, 3; powers of ten; every other power ...), at least two."""
    lo, hi = min(lo, hi), max(lo, hi)
    sets = (
        ((1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8), 1),
        ((1, 1.5, 2, 3, 5, 7), 1),
        ((1, 2, 5), 1),
        ((1, 3), 1),
        ((1,), 1),
        ((1,), 2),
        ((1,), 3),
        ((1,), 5),
    )
    for mantissas, step in sets:
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        ticks = [
            m * 10.0**k
            for k in range(first, last + 1)
            if (k - first) % step == 0
            for m in mantissas
            if lo * (1 - 1e-9) <= m * 10.0**k <= hi * (1 + 1e-9)
        ]
        if len(ticks) <= most:
            if len(ticks) >= 2:
                return ticks
            break
    # A narrow range (inside one 1-2-5 step): two or three plain values in it.
    span = math.log10(hi / lo)
    values = [lo * 10 ** (span * f) for f in ((0.15, 0.85) if span < 0.3 else (0.1, 0.5, 0.9))]
    return [_round_sig(v, 2) for v in values]


def _round_sig(x: float, sig: int) -> float:
    return round(x, sig - 1 - math.floor(math.log10(abs(x)))) if x else 0.0


def _log_limits(values: Sequence[float], pad: float = 0.08) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = math.log10(hi / lo) if hi > lo else 0.0
    margin = max(span * pad, 0.12)  # a single point or a narrow cluster still gets room around it
    return lo / 10**margin, hi * 10**margin


def _set_log_axis(axis: Any, values: Sequence[float], fmt: Callable[[float], str]) -> None:
    """Log scale with limits around `values`, a few labelled ticks in `fmt` units, unlabelled minor ticks."""
    ax = axis.axes
    lo, hi = _log_limits(values)
    if axis is ax.xaxis:
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
    else:
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=12))
    axis.set_minor_formatter(NullFormatter())


def _number(v: float) -> str:
    return f"{v:g}"


# --------------------------------------------------------------------------------------- report.png


def _metric(rows: Rows) -> str:
    if rows and all(isinstance(r.get("accuracy"), (int, float)) for r in rows):
        return "accuracy"
    if any(isinstance(r.get("perplexity"), (int, float)) for r in rows):
        return "perplexity"
    return "accuracy"


def _latency_key(rows: Rows) -> str | None:
    keys = {k for r in rows for k in r if k.startswith("latency_ms_batch_")}
    return min(keys, key=lambda k: int(k.rsplit("_", 1)[1])) if keys else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def plot_report(rows: Rows, title: str | None = None) -> Figure:
    """Test accuracy (perplexity for language models) against bytes on disk and against the latency of
    the smallest measured batch, log x, one colour and marker per model and one legend for both panels.
    The student and its compression stages are joined by a faint line, in pipeline order."""
    metric = _metric(rows)
    latency = _latency_key(rows)
    panels = [("bytes", "size on disk", human_bytes)]
    if latency:
        panels.append((latency, f"latency, batch {latency.rsplit('_', 1)[1]} (CPU)", human_ms))
    fig = _figure(5.2 * len(panels) + 2.6, 4.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ylabel = "test accuracy (higher is better)" if metric == "accuracy" else "test perplexity (lower is better)"
    handles: dict[str, Any] = {}
    ys = [r[metric] for r in rows if _positive(r.get(metric))]
    for ax, (key, label, fmt) in zip(axes, panels, strict=True):
        points = [(i, r) for i, r in enumerate(rows) if _positive(r.get(key)) and _positive(r.get(metric))]
        chain = [r for _, r in points if r.get("role") in ("student", "compressed") or r["model"] == "student"]
        if len(chain) > 1:
            ax.plot([r[key] for r in chain], [r[metric] for r in chain], color="0.6", lw=1, ls=":", zorder=1)
        for i, r in points:
            color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
            handles[r["model"]] = ax.scatter(
                r[key], r[metric], s=70, marker=marker, facecolor=color + "55", edgecolor=color, lw=1.6, zorder=3
            )
        xs = [r[key] for _, r in points]
        if xs:
            _set_log_axis(ax.xaxis, xs, fmt)
        ax.set_xlabel(label)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.08)
    if metric == "perplexity" and ys and max(ys) / min(ys) > 20:
        _set_log_axis(axes[0].yaxis, ys, _number)
    elif ys:
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.1, 0.02 * max(abs(hi), 1e-3))
        axes[0].set_ylim(lo - pad, hi + pad)
    axes[0].set_ylabel(ylabel)
    for i, r in enumerate(rows):  # models with nothing to plot still get their legend entry, marked
        if r["model"] not in handles:
            handles[f"{r['model']} (not measured)"] = axes[0].scatter(
                [], [], marker=MARKERS[i % len(MARKERS)], color=COLORS[i % len(COLORS)]
            )
    fig.legend(
        list(handles.values()), list(handles), loc="outside right center", title="model", frameon=False, fontsize=9
    )
    fig.suptitle(title or f"test {metric} against size and latency")
    return fig


# --------------------------------------------------------------------------------------- curves.png


def _val_key(histories: dict[str, Rows]) -> str | None:
    keys = {k for rows in histories.values() for r in rows for k in r if k.startswith("val/")}
    for preferred in ("val/acc", "val/accuracy", "val/ppl", "val/perplexity", "val/loss"):
        if preferred in keys:
            return preferred
    return min(keys) if keys else None


def _terms(rows: Rows) -> list[str]:
    """The loss terms of a stage worth their own line: `train/<term>` besides `train/loss`, unless the
    stage has a single term that is the loss itself."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("train/") and k != "train/loss"))
    if len(keys) == 1 and all(math.isclose(r.get(keys[0], math.nan), r.get("train/loss", 0.0)) for r in rows):
        return []
    return keys


def _series(rows: Rows, key: str) -> tuple[list[float], list[float]]:
    pairs = sorted((r["epoch"], r[key]) for r in rows if key in r and math.isfinite(r[key]))
    return [p[0] for p in pairs], [p[1] for p in pairs]


VAL_NAMES = {"val/acc": "validation accuracy", "val/ppl": "validation perplexity", "val/loss": "validation loss"}


def plot_curves(histories: dict[str, Rows], title: str | None = None) -> Figure | None:
    """Every stage's training against epochs: on top, the validation metric of all stages (one line
    each); below, one panel per stage with its training loss (black) and each of its loss terms
    (one colour per term, the same in every panel; one legend). None when no stage recorded an epoch."""
    stages = {s: rows for s, rows in histories.items() if rows}
    if not stages:
        return None
    val_key = _val_key(stages)
    loss_stages = [s for s, rows in stages.items() if any(k.startswith("train/") for r in rows for k in r)]
    ncols = 1 if len(loss_stages) <= 1 else 2 if len(loss_stages) <= 4 else 3
    nrows = math.ceil(len(loss_stages) / ncols) if loss_stages else 0
    fig = _figure(4.0 * max(ncols, 2) + 2.4, 3.6 * bool(val_key) + 2.5 * nrows + 0.6)
    grid = fig.add_gridspec(int(bool(val_key)) + nrows, ncols, height_ratios=[1.35] * bool(val_key) + [1] * nrows)
    if val_key:
        ax = fig.add_subplot(grid[0, :])
        values = []
        for i, (stage, rows) in enumerate(stages.items()):
            x, y = _series(rows, val_key)
            if x:
                ax.plot(
                    x, y, color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], ms=5, lw=1.6, label=stage
                )
                values += y
        if "ppl" in val_key and values and min(values) > 0 and max(values) / min(values) > 20:
            _set_log_axis(ax.yaxis, values, _number)
        ax.set_ylabel(VAL_NAMES.get(val_key, val_key.replace("/", " ")))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="stage", frameon=False, fontsize=9)
        ax.set_title(VAL_NAMES.get(val_key, val_key) + " per epoch", fontsize=11)
    term_color: dict[str, str] = {}
    legend: dict[str, Any] = {}
    for n, stage in enumerate(loss_stages):
        rows = stages[stage]
        ax = fig.add_subplot(grid[int(bool(val_key)) + n // ncols, n % ncols])
        values = []
        x, y = _series(rows, "train/loss")
        if x:
            (legend["total loss"],) = ax.plot(x, y, color="black", lw=2, marker="o", ms=3.5)
            values += y
        for term in _terms(rows):
            color = term_color.setdefault(term, TERM_COLORS[len(term_color) % len(TERM_COLORS)])
            x, y = _series(rows, term)
            if x:
                (legend[f"term: {term.removeprefix('train/')}"],) = ax.plot(
                    x, y, color=color, lw=1.4, ls="--", marker="o", ms=2.5
                )
                values += y
        if values and min(values) > 0 and max(values) / min(values) > 50:
            _set_log_axis(ax.yaxis, values, _number)  # a loss that fell by orders of magnitude
        else:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.set_title(stage, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if n // ncols == nrows - 1 or n + ncols >= len(loss_stages):
            ax.set_xlabel("epoch", fontsize=9)
        if n % ncols == 0:
            ax.set_ylabel("training loss", fontsize=9)
    if legend:
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="outside lower center",
            ncol=min(len(legend), 6),
            frameon=False,
            fontsize=9,
            title="in the panel of each stage",
            title_fontsize=9,
        )
    fig.suptitle(title or "training curves")
    return fig


def write_curves(histories: dict[str, Rows] | None, path: Path | str) -> Path | None:
    """Write curves.png (see `plot_curves`) when there are histories; a failure to draw is logged, not raised:
    the run's report must not be lost to a picture."""
    if not histories:
        return None
    try:
        fig = plot_curves(histories)
        return save(fig, path) if fig is not None else None
    except Exception:  # noqa: BLE001
        log.warning("Could not draw %s", path, exc_info=True)
        return None


# -------------------------------------------------------------------------------------- summary.png


def parse_override(text: str) -> tuple[str, str]:
    """`distill.kd.temperature=4` -> (`distill.kd.temperature`, `4`); `+x=1`, `++x=1`, `~x` keep their key."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value if "=" in text else "(deleted)"


def swept_parameters(overrides: list[list[str]]) -> tuple[list[dict[str, str]], list[str]]:
    """Each job's overrides as a dict, and the keys whose value is not the same in every job (in order)."""
    params = [dict(parse_override(o) for o in job) for job in overrides]
    keys = list(dict.fromkeys(k for p in params for k in p))
    varying = [k for k in keys if len({p.get(k) for p in params}) > 1]
    return params, varying


def _as_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _is_numeric(values: Sequence[str | None]) -> bool:
    return all(_as_float(v) is not None for v in values)


def _order(values: Sequence[str | None]) -> list[str | None]:
    distinct = list(dict.fromkeys(values))
    return sorted(distinct, key=lambda v: _as_float(v)) if _is_numeric(distinct) else distinct


def _label(value: str | None) -> str:
    return "(default)" if value is None else value


def _wrapped(value: str | None, width: int = 14) -> str:
    """A long category on several lines, broken after its commas: `[hard,kd,fitnet,\ncrd,rkd]`."""
    lines = [""]
    for part in _label(value).replace(",", ",\0").split("\0"):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _width(text: str) -> int:
    return max(len(line) for line in text.split("\n"))


def _short_key(key: str) -> str:
    """`distill.kd.temperature` stays whole; a very long key keeps its last three parts."""
    parts = key.split(".")
    return key if len(key) <= 32 or len(parts) <= 3 else "…." + ".".join(parts[-3:])


def plot_sweep(
    params: list[dict[str, str]],
    varying: list[str],
    results: list[float | None],
    metric: str = "student test accuracy",
    references: dict[str, list[float | None]] | None = None,
    title: str = "sweep",
    failed: list[str] | None = None,
) -> Figure | None:
    """The student's result against what the sweep varied: a line for one parameter (its values as
    categories unless they are all numbers), a heatmap with the values in the cells for two, one panel
    per parameter beyond that. `references` (baseline, teacher: one value per job) are drawn as
    horizontal lines when the same in every job, as dashed lines otherwise. Jobs without a result
    are left out and named under the title. None when no job has a result."""
    references = references or {}
    ok = [i for i, r in enumerate(results) if r is not None and math.isfinite(r)]
    if not ok:
        return None
    lower_better = "perplexity" in metric
    heading = f"{title}: {metric}" + (" (lower is better)" if lower_better else "")
    if failed:
        names = ", ".join(failed[:6]) + (f" and {len(failed) - 6} more" if len(failed) > 6 else "")
        heading += f"\n{len(failed)} of {len(results)} jobs without a report, not shown: {names}"
    if not varying:
        varying = ["job"]
        params = [{"job": str(i)} for i in range(len(results))]
    if len(varying) == 2:
        fig = _heatmap(params, varying, results, ok, metric, references, lower_better)
        if fig is not None:
            fig.suptitle(heading, fontsize=11)
            return fig
    panels = varying if len(varying) > 1 else varying[:1]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    # Room across for the longest row of category labels (a category is shown as written: `[hard,kd]`).
    chars = max(sum(_width(_wrapped(v)) + 2 for v in dict.fromkeys(p.get(k) for p in params)) for k in panels)
    fig = _figure(max(6.5, 4.3 * ncols + 2.2, min(0.075 * chars * ncols + 2.8, 16)), 3.9 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    handles: dict[str, Any] = {}
    for ax, key in zip(axes, panels, strict=False):
        _sweep_panel(ax, key, params, results, ok, references, handles, connect=len(panels) == 1)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(metric)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center", frameon=False, fontsize=9)
    fig.suptitle(heading, fontsize=11)
    _declutter_ticks(fig)
    return fig


def _sweep_panel(
    ax: Any,
    key: str,
    params: list[dict[str, str]],
    results: list[float | None],
    ok: list[int],
    references: dict[str, list[float | None]],
    handles: dict[str, Any],
    connect: bool,
) -> None:
    values = [params[i].get(key) for i in ok]
    numeric = _is_numeric(values)
    order = _order(values)
    if numeric:
        xs = [_as_float(v) for v in values]
        positions = {v: _as_float(v) for v in order}
    else:
        xs = [order.index(v) for v in values]
        positions = {v: float(n) for n, v in enumerate(order)}
    ys = [results[i] for i in ok]
    means = {v: sum(y for x, y in zip(values, ys, strict=True) if x == v) / values.count(v) for v in order}
    repeated = len(ok) > len(order)  # several jobs per value (other parameters, seeds): their mean is the line
    name = "student, each job" if repeated else "student"
    handles[name] = ax.scatter(xs, ys, s=36, color=COLORS[0], alpha=0.5 if repeated else 1, zorder=3)
    if (connect and numeric) or repeated:  # categories have no order to draw a line along, unless a mean
        line = ax.plot([positions[v] for v in order], [means[v] for v in order], color=COLORS[0], lw=1.6, zorder=2)
        if repeated:
            handles["student, mean per value"] = line[0]
    for n, (name, per_job) in enumerate(references.items()):
        refs = [(xs[k], per_job[i]) for k, i in enumerate(ok) if per_job[i] is not None]
        if not refs:
            continue
        color = COLORS[(n + 1) % len(COLORS)]
        distinct = {round(v, 9) for _, v in refs}
        if len(distinct) == 1:
            handles[f"{name} ({refs[0][1]:.4g})"] = ax.axhline(refs[0][1], color=color, ls="--", lw=1.3)
        else:
            refs.sort()
            (handles[f"{name}, per job"],) = ax.plot(*zip(*refs, strict=True), color=color, ls="--", lw=1.3, marker=".")
    if numeric:
        pos = [p for p in positions.values() if p is not None]
        if min(pos) > 0 and max(pos) / min(pos) >= 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if len(order) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(pos))
            labels = dict(zip(pos, order, strict=True))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: str(labels.get(v, f"{v:g}"))))
            ax.xaxis.set_minor_locator(FixedLocator([]))
    else:
        ax.set_xticks(range(len(order)), [_wrapped(v) for v in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel(_short_key(key))
    ax.grid(True, alpha=0.3)


def _heatmap(
    params: list[dict[str, str]],
    varying: list[str],
    results: list[float | None],
    ok: list[int],
    metric: str,
    references: dict[str, list[float | None]],
    lower_better: bool,
) -> Figure | None:
    """Two swept parameters as a grid, the value written in each cell; None when the grid would be
    mostly empty (a random search), for the per-parameter panels instead."""
    import numpy as np

    orders = {k: _order([p.get(k) for p in params]) for k in varying}
    cols_key, rows_key = sorted(varying, key=lambda k: -len(orders[k]))  # the longer list across
    cols, rows = orders[cols_key], orders[rows_key]
    cells: dict[tuple[int, int], list[float]] = {}
    for i in ok:
        cell = (rows.index(params[i].get(rows_key)), cols.index(params[i].get(cols_key)))
        cells.setdefault(cell, []).append(results[i])
    if len(cells) < 0.5 * len(rows) * len(cols) and len(rows) * len(cols) > 4:
        return None
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), values in cells.items():
        grid[r, c] = sum(values) / len(values)
    cell_w = max(0.75, 0.1 * max(_width(_wrapped(v)) for v in cols))
    fig = _figure(max(5.5, cell_w * len(cols) + 3.2), max(3.6, 0.55 * len(rows) + 2.3))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis_r" if lower_better else "viridis"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    best = lo if lower_better else hi  # in bold
    size = 9 if len(cols) <= 8 else 7
    for r in range(len(rows)):
        for c in range(len(cols)):
            value = grid[r, c]
            if np.isnan(value):
                ax.text(c, r, "no result", ha="center", va="center", fontsize=size - 1, color="0.4")
                continue
            shade = (value - lo) / (hi - lo) if hi > lo else 0.5
            dark = shade < 0.55 if not lower_better else shade > 0.45
            text = f"{value:.3f}" if value < 10 else f"{value:.4g}"
            count = len(cells[(r, c)])
            ax.text(
                c,
                r,
                text + (f"\n(n={count})" if count > 1 else ""),
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
                fontweight="bold" if value == best else "normal",
            )
    ax.set_xticks(range(len(cols)), [_wrapped(v) for v in cols])
    ax.set_yticks(range(len(rows)), [_wrapped(v, 24) for v in rows])
    ax.set_xlabel(_short_key(cols_key))
    ax.set_ylabel(_short_key(rows_key))
    ax.tick_params(length=0)
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(metric)
    refs = []
    for name, per_job in references.items():
        values = {round(v, 9) for v in per_job if v is not None}
        if len(values) == 1:
            value = next(iter(values))
            refs.append(f"{name} {value:.4g}")
            if lo <= value <= hi or hi == lo:
                bar.ax.axhline(value, color="red", lw=1.5)
        elif values:
            refs.append(f"{name} {min(values):.4g}–{max(values):.4g}")
    if refs:
        ax.set_title("for reference: " + ", ".join(refs), fontsize=9, color="0.3")
    _declutter_ticks(fig)
    return fig


def _declutter_ticks(fig: Figure) -> None:
    """Turn x tick labels that collide by 30°, then 90°; if they still do, label every other tick only."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    for ax in fig.axes:
        if not _collide(_xlabels(ax), renderer):
            continue
        for angle in (30, 90):
            ax.tick_params(axis="x", labelrotation=angle)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right" if angle < 90 else "center")
                t.set_rotation_mode("anchor" if angle < 90 else "default")
            fig.draw_without_rendering()
            if not _collide(_xlabels(ax), renderer):
                break
        step = 2
        while _collide(_xlabels(ax), renderer) and step < len(ax.get_xticklabels()):
            for n, t in enumerate(ax.get_xticklabels()):
                t.set_visible(n % step == 0)
            step += 1
            fig.draw_without_rendering()


def _xlabels(ax: Any) -> list[Any]:
    return [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]


def _collide(texts: list[Any], renderer: Any) -> bool:
    boxes = [t.get_window_extent(renderer) for t in texts]
    return any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1 :])
