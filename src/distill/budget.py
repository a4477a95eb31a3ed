"""A deployment budget (`budget.*`): limits on a model's size, speed and loss of quality, checked against every
model of the report the way the report measures them.

    budget.max_params                parameters
    budget.max_flops                 FLOPs per sample
    budget.max_bytes                 bytes on disk
    budget.max_latency_ms            CPU latency at batch 1, in milliseconds
    budget.max_accuracy_drop         test accuracy below the best teacher's (classification)
    budget.max_perplexity_increase   test perplexity above the teacher's (language models)

Any combination; null (the default) sets no limit. Each row of the report says whether the model meets the
budget (`meets_budget`, with what it misses), and the report names the most accurate model that does, or,
when none does, the closest one. A budget the teacher already meets (nothing to compress) is refused before
training, as is an unknown key.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from distill.errors import DistillError

#: budget key -> (the report column it limits, what it is called)
SIZE_KEYS = {
    "max_params": ("parameters", "parameters"),
    "max_flops": ("flops", "FLOPs per sample"),
    "max_bytes": ("bytes", "bytes on disk"),
    "max_latency_ms": ("latency_ms_batch_1", "batch-1 latency (ms)"),
}
QUALITY_KEYS = {
    "max_accuracy_drop": ("accuracy", "accuracy drop below the teacher"),
    "max_perplexity_increase": ("perplexity", "perplexity increase over the teacher"),
}
KEYS = (*SIZE_KEYS, *QUALITY_KEYS)


def limits_of(node: Any) -> dict[str, float]:
    """The limits set in the `budget` config node (null entries left out), after checking every key and value."""
    if node is None:
        return {}
    if not isinstance(node, DictConfig | dict):
        raise DistillError(f"budget must be a mapping of limits ({', '.join(KEYS)}), got {node!r}")
    limits = {}
    for key, value in node.items():
        if key not in KEYS:
            raise DistillError(f"unknown budget key '{key}': use {', '.join(KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise DistillError(f"budget.{key} must be a number >= 0 or null, got {value!r}")
        if key in SIZE_KEYS and value == 0:
            raise DistillError(f"budget.{key} must be > 0 (no model has zero {SIZE_KEYS[key][1]})")
        limits[key] = float(value)
    return limits


def describe(limits: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in limits.items())


def teacher_reference(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The teacher figures quality limits are measured from: the best teacher's accuracy, the lowest perplexity."""
    teachers = [r for r in rows if r.get("role") == "teacher"]
    reference = {}
    accuracies = [r["accuracy"] for r in teachers if isinstance(r.get("accuracy"), int | float)]
    if accuracies:
        reference["accuracy"] = max(accuracies)
    perplexities = [r["perplexity"] for r in teachers if isinstance(r.get("perplexity"), int | float)]
    if perplexities:
        reference["perplexity"] = min(perplexities)
    return reference


def misses(row: dict[str, Any], limits: dict[str, float], reference: dict[str, float]) -> dict[str, float] | None:
    """What `row` exceeds: budget key -> by how much (empty: it meets the budget); None when a limited figure
    was not measured for it (e.g. FLOPs of an ONNX file)."""
    over: dict[str, float] = {}
    for key, limit in limits.items():
        if key in SIZE_KEYS:
            value = row.get(SIZE_KEYS[key][0])
        else:
            column = QUALITY_KEYS[key][0]
            if column not in reference or not isinstance(row.get(column), int | float):
                return None
            value = reference[column] - row[column] if column == "accuracy" else row[column] - reference[column]
        if not isinstance(value, int | float):
            return None
        if value > limit + 1e-12:
            over[key] = float(value - limit)
    return over


def _shortfall(over: dict[str, float], limits: dict[str, float]) -> float:
    """How far a model is from the budget: the sum of its excesses relative to each limit."""
    return sum(v / limits[k] if limits[k] > 0 else v for k, v in over.items())


def judge(rows: list[dict[str, Any]], limits: dict[str, float]) -> dict[str, Any]:
    """Mark each row `meets_budget` (True, False, or None when unmeasured) and `budget_misses`; return the
    report's budget entry: the limits, the models that meet them, the best of those (highest accuracy or
    lowest perplexity, teachers left out) or, when none does, the closest model and what it misses."""
    if not limits:
        return {}
    reference = teacher_reference(rows)
    metric, better = ("accuracy", max) if "accuracy" in reference else ("perplexity", min)
    within, shortfalls = [], {}
    for row in rows:
        over = misses(row, limits, reference)
        row["meets_budget"] = None if over is None else not over
        if over:
            row["budget_misses"] = over
        if row.get("role") == "teacher" or over is None:
            continue
        if not over:
            within.append(row)
        else:
            shortfalls[row["model"]] = _shortfall(over, limits)
    entry: dict[str, Any] = {"limits": limits, "within": [r["model"] for r in within]}
    if within:
        scored = [r for r in within if isinstance(r.get(metric), int | float)]
        best = better(scored, key=lambda r: r[metric]) if scored else within[0]
        entry["best"] = {"model": best["model"], metric: best.get(metric), "artifact": best.get("artifact")}
    elif shortfalls:
        closest = min(shortfalls, key=shortfalls.get)
        row = next(r for r in rows if r["model"] == closest)
        entry["closest"] = {"model": closest, "misses": row["budget_misses"]}
    return entry


def budget_lines(entry: dict[str, Any]) -> list[str]:
    """The report's lines on the budget."""
    if not entry:
        return []
    lines = [f"- budget: {describe(entry['limits'])}"]
    if entry.get("best"):
        best = entry["best"]
        lines.append(f"- within budget: {', '.join(entry['within'])}; best: {best['model']}")
    elif entry.get("closest"):
        closest = entry["closest"]
        over = ", ".join(f"{k} by {v:.4g}" for k, v in closest["misses"].items())
        lines.append(f"- no model meets the budget; closest: {closest['model']} (over {over})")
    else:
        lines.append("- no model meets the budget")
    return lines


def check_teacher_outside(limits: dict[str, float], teachers: dict[str, dict[str, float]]) -> None:
    """Refuse a budget a teacher already meets on every size limit (nothing to compress): `teachers` maps each
    teacher's name to its measured size figures (the report's column names)."""
    sizes = {k: v for k, v in limits.items() if k in SIZE_KEYS}
    if not sizes:
        return
    for name, figures in teachers.items():
        if all(isinstance(figures.get(SIZE_KEYS[k][0]), int | float) and figures[SIZE_KEYS[k][0]] <= v
               for k, v in sizes.items()):  # fmt: skip
            shown = ", ".join(
                f"{SIZE_KEYS[k][1]} {figures[SIZE_KEYS[k][0]]:,.4g} <= {v:,.4g}" for k, v in sizes.items()
            )
            raise DistillError(
                f"the teacher '{name}' already meets the budget ({shown}): there is nothing to compress; "
                "lower the limits"
            )


def check_reachable(limits: dict[str, float], student: dict[str, float], stages: list[str]) -> None:
    """Refuse a size limit no model of the run can meet: the student (the smallest model trained) exceeds it and
    no compression stage follows that could shrink it. `student` holds its measured size figures."""
    if stages:
        return
    over = {
        k: (student[SIZE_KEYS[k][0]], v)
        for k, v in limits.items()
        if k in SIZE_KEYS and isinstance(student.get(SIZE_KEYS[k][0]), int | float) and student[SIZE_KEYS[k][0]] > v
    }
    if over:
        shown = ", ".join(f"{SIZE_KEYS[k][1]} {got:,.4g} > {limit:,.4g}" for k, (got, limit) in over.items())
        raise DistillError(
            f"no model of this run can meet the budget: the closest, the student, has {shown}, and no compression "
            "stage follows (compress=[...]); choose a smaller student or add stages"
        )


def size_figures(model: Any, runner: Any, example: Any, limits: dict[str, float], repeats: int) -> dict[str, float]:
    """The size figures of `model` that `limits` names, measured as the report measures them."""
    from distill.measure import count_parameters, flops_per_sample, latency_ms, weights_bytes

    figures: dict[str, float] = {}
    if "max_params" in limits:
        figures["parameters"] = count_parameters(model)
    if "max_bytes" in limits:
        figures["bytes"] = weights_bytes(model)
    if "max_flops" in limits:
        figures["flops"] = flops_per_sample(runner, example)
    if "max_latency_ms" in limits:
        figures["latency_ms_batch_1"] = latency_ms(runner, example, 1, repeats=repeats)
    return figures
