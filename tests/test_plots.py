"""The pictures: report.png, curves.png and summary.png are written, readable (no two texts overlap, none
leaves the figure) and say what they show. Synthetic rows and histories only: no training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.figure import Figure
from matplotlib.text import Text

from distill import plots
from distill.report import publish_report
from distill.sweeps import job_row, summarize_sweep


def _model(name: str, role: str, acc: float, size: int, ms: float, **extra: Any) -> dict[str, Any]:
    return {"model": name, "role": role, "accuracy": acc, "bytes": size, "latency_ms_batch_1": ms,
            "latency_ms_batch_1024": ms * 40, "parameters": size // 4, **extra}  # fmt: skip


# Eight models, compressed ones with the student's size and latency or close to each other.
ROWS = [
    _model("teacher:cnn", "teacher", 0.864, 724_190, 0.194),
    _model("teacher:cnn_small", "teacher", 0.812, 63_710, 0.124),
    _model("baseline", "baseline", 0.351, 63_765, 0.0353),
    _model("student", "student", 0.516, 63_765, 0.0364),
    _model("compress:prune_structured", "compressed", 0.425, 23_445, 0.0322),
    _model("compress:recover", "compressed", 0.497, 23_445, 0.0348),
    _model("compress:int8", "compressed", 0.495, 10_745, 0.0118, flops=None),
    _model("compress:onnx", "compressed", 0.495, 10_900, 0.0121),
]

LM_ROWS = [
    {"model": "teacher:tiny_llama", "role": "teacher", "perplexity": 498.4, "bytes": 4_230_382, "latency_ms_batch_1": 2.54},
    {"model": "baseline", "role": "baseline", "perplexity": 936.3, "bytes": 928_868, "latency_ms_batch_1": 1.177},
    {"model": "student", "role": "student", "perplexity": 853.0, "bytes": 928_868, "latency_ms_batch_1": 1.188},
]  # fmt: skip


def _history(epochs: int, start: float, terms: dict[str, float] | None = None, val: float = 0.3) -> list[dict]:
    rows = []
    for k in range(epochs):
        decay = math.exp(-0.4 * k)
        row = {"epoch": k, "val/acc": val + (0.9 - val) * (1 - decay) * 0.6}
        parts = {f"train/{t}": w * decay for t, w in (terms or {}).items()}
        row.update(parts)
        row["train/loss"] = sum(parts.values()) if parts else start * decay
        rows.append(row)
    return rows


HISTORIES = {
    "teacher_cnn": _history(10, 1.5, val=0.6),
    "teacher_cnn_small": _history(8, 1.7, val=0.5),
    "baseline": _history(12, 2.0, val=0.25),
    "student": _history(20, 0, {"hard": 1.9, "kd": 4.8, "fitnet": 0.6}, val=0.29),
    "compress_recover": _history(5, 0, {"hard": 1.0, "kd": 1.5, "fitnet": 0.55}, val=0.6),
    "gen1": _history(20, 0, {"hard": 1.8, "kd": 2.5}, val=0.3),
}


def visible_texts(fig: Figure) -> list[Text]:
    """Every text the figure draws: titles, axis labels, tick labels inside the axis limits, legends, texts."""
    fig.canvas.draw()
    texts: list[Text] = [t for t in (fig._suptitle, fig._supxlabel, fig._supylabel) if t is not None]
    texts += fig.texts
    for legend in fig.legends:
        texts += [*legend.get_texts(), legend.get_title()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) * 1e-6
            for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
                for tick in ticks:
                    if tick.get_loc() is not None and lo - span <= tick.get_loc() <= hi + span:
                        texts += [tick.label1, tick.label2]
    unique = {id(t): t for t in texts}.values()  # the suptitle is also one of fig.texts
    return [t for t in unique if t.get_visible() and t.get_text().strip()]


def axis_labels(axis: Any) -> list[str]:
    """The tick labels drawn on `axis` (inside its limits)."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_ticks() if t.get_loc() is not None and lo <= t.get_loc() <= hi]
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text()]


def assert_readable(fig: Figure) -> list[str]:
    """No two visible texts overlap and every one lies inside the figure; returns their strings."""
    renderer = fig.canvas.get_renderer()
    texts = visible_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    page = fig.bbox
    for t, box in zip(texts, boxes, strict=True):
        assert box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1, f"{t.get_text()!r} leaves the figure: {box}"
        assert box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, f"{t.get_text()!r} leaves the figure: {box}"
    for i, (a, box_a) in enumerate(zip(texts, boxes, strict=True)):
        for b, box_b in zip(texts[i + 1 :], boxes[i + 1 :], strict=True):
            shrunk_a = box_a.expanded(1, 1).shrunk(0.98, 0.98)  # touching edges are fine
            assert not shrunk_a.overlaps(box_b), f"{a.get_text()!r} overlaps {b.get_text()!r}"
    return [t.get_text() for t in texts]


def legend_texts(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


@pytest.mark.parametrize("rows", [ROWS, ROWS[:4], ROWS[3:4], LM_ROWS], ids=["8 models", "4", "1", "lm"])
def test_report_plot_names_every_model_in_one_legend_and_no_text_overlaps(rows: list[dict], tmp_path: Path) -> None:
    fig = plots.plot_report(rows)
    texts = assert_readable(fig)
    assert legend_texts(fig) == [r["model"] for r in rows]  # one entry per model, for both panels
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2  # size and latency
    xlabels = [ax.get_xlabel() for ax in fig.axes]
    assert "size on disk" in xlabels[0] and "latency" in xlabels[1]
    tick_text = " ".join(texts)
    assert "KB" in tick_text or "MB" in tick_text
    assert " ms" in tick_text
    assert not any("$" in t or "10^" in t for t in texts)  # human units, not 10^4 mathtext
    metric = "perplexity" if "perplexity" in rows[0] else "accuracy"
    assert metric in fig.axes[0].get_ylabel()
    path = plots.save(fig, tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_without_a_latency_keeps_its_legend_entry() -> None:
    rows = [*ROWS[:4], {**ROWS[6], "latency_ms_batch_1": None}]
    fig = plots.plot_report(rows)
    assert_readable(fig)
    assert legend_texts(fig) == [r["model"] for r in rows]


def test_units_and_log_ticks() -> None:
    assert plots.human_bytes(12_000) == "12 KB"
    assert plots.human_bytes(1_300_000) == "1.3 MB"
    assert plots.human_bytes(512) == "512 B"
    assert plots.human_ms(0.05) == "0.05 ms"
    assert plots.human_ms(2) == "2 ms"
    assert plots.human_ms(1500) == "1.5 s"
    for lo, hi in ((10_745, 724_190), (0.0118, 0.194), (900_000, 1_100_000), (1, 1e9), (0.03, 0.031)):
        ticks = plots.log_ticks(lo, hi)
        assert 2 <= len(ticks) <= 6, (lo, hi, ticks)
        assert all(lo * 0.999 <= t <= hi * 1.001 for t in ticks), (lo, hi, ticks)


@pytest.mark.parametrize("stages", [3, 6, 8])
def test_curves_show_every_stage_and_loss_term_without_overlaps(stages: int) -> None:
    histories = dict(list(HISTORIES.items())[:stages])
    for n in range(len(histories), stages):  # 8: two more generations
        histories[f"gen{n - 4}"] = _history(6, 0, {"hard": 1.0, "kd": 2.0 + n})
    fig = plots.plot_curves(histories)
    assert fig is not None
    assert_readable(fig)
    legends = legend_texts(fig)
    assert set(histories) <= set(legends)  # the validation panel: one line per stage
    for term in {t.removeprefix("train/") for rows in histories.values() for t in plots._terms(rows)}:
        assert f"term: {term}" in legends
    assert "total loss" in legends
    titles = [ax.get_title() for ax in fig.axes]
    assert set(histories) <= set(titles)  # one panel of losses per stage
    for ax in fig.axes:  # every panel says what its values are, log-scaled losses too
        assert len(axis_labels(ax.yaxis)) >= 2, (ax.get_title(), ax.get_yscale())
        assert not any("$" in t for t in axis_labels(ax.yaxis))


def test_curves_of_language_models_and_of_nothing() -> None:
    histories = {
        "teacher_tiny_llama": [{"epoch": k, "val/ppl": 3000 / (k + 1), "train/lm": 7 - k, "train/loss": 7 - k} for k in range(4)],
        "student": [{"epoch": k, "val/ppl": 4000 / (k + 1), "train/lm": 7 - k, "train/forward_kl": 1 / (k + 1),
                     "train/loss": 3.5 - k / 2} for k in range(4)],
    }  # fmt: skip
    fig = plots.plot_curves(histories)
    assert_readable(fig)
    legends = legend_texts(fig)
    assert "term: forward_kl" in legends and "term: lm" in legends  # the student's terms...
    assert "perplexity" in fig.axes[0].get_ylabel()
    assert plots.plot_curves({}) is None and plots.plot_curves({"teacher_cnn": []}) is None


def test_publish_report_writes_report_and_curves(tmp_path: Path) -> None:
    publish_report(ROWS, tmp_path, [], "synthetic", histories=HISTORIES)
    for name in ("report.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    assert "![training curves](curves.png)" in (tmp_path / "report.md").read_text()
    publish_report(ROWS, tmp_path / "no_histories", [], "synthetic")
    assert not (tmp_path / "no_histories" / "curves.png").exists()
    assert "curves.png" not in (tmp_path / "no_histories" / "report.md").read_text()


# ------------------------------------------------------------------------------------------- sweeps


def _job(sweep: Path, n: int, overrides: list[str], student: float | None, perplexity: bool = False) -> None:
    job = sweep / f"{n}_4242"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["paths.log_dir=/somewhere", *overrides]))
    if student is None:
        return  # a job that failed before its report
    key = "perplexity" if perplexity else "accuracy"
    models = [
        {"model": "teacher:cnn", "role": "teacher", key: 0.864 if not perplexity else 498.0, "bytes": 1},
        {"model": "baseline", "role": "baseline", key: 0.351 if not perplexity else 936.0, "bytes": 1},
        {"model": "student", "role": "student", key: student, "bytes": 1},
    ]
    report = {"models": models, "summary": {"gap_closed": 0.3}, "student_val_accuracy": student}
    (job / "report.json").write_text(json.dumps(report))


def _sweep_figure(sweep: Path) -> Figure:
    jobs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))
    rows = [job_row(p) for p in jobs]
    params, varying = plots.swept_parameters([yaml.safe_load((p / ".hydra/overrides.yaml").read_text()) for p in jobs])
    key = "student_perplexity" if any("student_perplexity" in r for r in rows) else "student_accuracy"
    results = [r.get(key) for r in rows]
    refs = {"baseline": [r.get(key.replace("student", "baseline")) for r in rows]}
    failed = [r["job"] for r, v in zip(rows, results, strict=True) if v is None]
    return plots.plot_sweep(params, varying, results, key.replace("_", " "), refs, sweep.name, failed)


def test_one_parameter_sweep_draws_the_student_against_it_and_names_failed_jobs(tmp_path: Path) -> None:
    for n, (t, acc) in enumerate([(1, 0.566), (2, 0.53), (4, 0.516), (8, 0.558), (16, None)]):
        _job(tmp_path, n, [f"distill.kd.temperature={t}"], acc)
    summarize_sweep(tmp_path)
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "(summary.png)" in (tmp_path / "summary.md").read_text()
    fig = _sweep_figure(tmp_path)
    texts = assert_readable(fig)
    assert fig.axes[0].get_xlabel() == "distill.kd.temperature"
    assert {"1", "2", "4", "8"} <= set(texts) and "16" not in texts  # the failed job is not drawn...
    assert "4_4242" in fig._suptitle.get_text()  # ...but named
    assert any(t.startswith("baseline") for t in legend_texts(fig))


def test_categorical_sweep_keeps_its_values_as_categories(tmp_path: Path) -> None:
    values = ["[hard,kd]", "[hard,dkd]", "[hard,kd,fitnet,crd,rkd]", "[hard,kd,at]", "[hard,sp]", "[hard,pkt,kd]"]
    for n, value in enumerate(values):
        _job(tmp_path, n, [f"distill={value}"], 0.5 + n / 100)
    fig = _sweep_figure(tmp_path)
    texts = assert_readable(fig)
    assert [t.get_text().replace("\n", "") for t in fig.axes[0].get_xticklabels()] == values  # in the sweep's order
    assert {t.replace("\n", "") for t in texts} >= set(values)  # all shown


def test_two_parameter_sweep_is_a_grid_with_values_in_cells(tmp_path: Path) -> None:
    n = 0
    for t in (1, 4, 8):
        for w in (0.5, 0.9):
            acc = None if (t, w) == (8, 0.9) else 0.5 + t / 100 + w / 10
            _job(tmp_path, n, [f"distill.kd.temperature={t}", f"distill.kd.weight={w}"], acc)
            n += 1
    summarize_sweep(tmp_path)
    assert (tmp_path / "summary.png").is_file()
    fig = _sweep_figure(tmp_path)
    texts = assert_readable(fig)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("distill.kd.temperature", "distill.kd.weight")
    assert f"{0.5 + 0.04 + 0.09:.3f}" in texts  # the value of a cell
    assert "no result" in texts  # the failed job's cell
    assert "5_4242" in fig._suptitle.get_text()


def test_more_parameters_get_one_panel_each_and_language_models_their_perplexity(tmp_path: Path) -> None:
    n = 0
    for t in (1, 4):
        for w in (0.5, 0.9):
            for lr in ("1e-3", "1e-2", "1e-1"):
                _job(tmp_path, n, [f"t={t}", f"w={w}", f"lr={lr}"], 800 - 10 * n, perplexity=True)
                n += 1
    rows = summarize_sweep(tmp_path)
    assert rows[0]["student_perplexity"] == 800 and rows[0]["teacher_perplexity"] == 498.0
    assert "student_perplexity" in (tmp_path / "summary.md").read_text()
    fig = _sweep_figure(tmp_path)
    assert_readable(fig)
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == ["t", "w", "lr"]
    assert "perplexity" in fig._suptitle.get_text()


def test_a_sweep_without_any_report_has_no_picture(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["a=1"], None)
    _job(tmp_path, 1, ["a=2"], None)
    summarize_sweep(tmp_path)
    assert not (tmp_path / "summary.png").exists()
    assert "summary.png" not in (tmp_path / "summary.md").read_text()


def test_the_overlap_check_catches_labels_on_top_of_each_other() -> None:
    fig = plots._figure(4, 3)
    ax = fig.add_subplot()
    ax.scatter([1, 1.01], [1, 1])
    ax.set_xlim(0, 10)
    ax.annotate("student", (1, 1))
    ax.annotate("compress:onnx", (1.01, 1))
    with pytest.raises(AssertionError, match="overlaps"):
        assert_readable(fig)
