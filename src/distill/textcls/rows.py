"""Labelled texts read from local files (CSV, JSON lines, or any format `datasets` reads locally), and
the checks of their fields and labels (see `distill.textcls`)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.jsonlines import json_objects

SPLITS = ("train", "val", "test")
HF_FORMATS = ("json", "csv", "parquet")


@dataclass
class Example:
    """One labelled text (or sentence pair); `label` as read (an int or a class name), `where` names its row,
    `group` the unit that splits keep together (a stdlib file)."""

    text: str
    pair: str | None
    label: int | str
    where: str
    group: str = ""


def parse_label(value: Any, where: str, field: str, from_csv: bool = False) -> int | str:
    """A label cell as an int (an integer, or in CSV an integer literal) or a class name (a non-empty string)."""
    if isinstance(value, bool) or value is None:
        raise DistillError(f"{where}: label '{field}' must be an integer or a class name, got {value!r}")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if from_csv and text.lstrip("+-").isdigit():
            return int(text)
        return text
    raise DistillError(f"{where}: label '{field}' must be an integer or a class name, got {value!r}")


def _example(row: dict, where: str, fields: tuple[str, str | None, str], from_csv: bool = False) -> Example:
    text_field, pair_field, label_field = fields
    values = []
    for name in (text_field, pair_field, label_field):
        if name is None:
            values.append(None)
            continue
        if name not in row or row[name] is None:
            present = ", ".join(str(k) for k, v in row.items() if k is not None and v is not None) or "none"
            raise DistillError(f"{where}: no field '{name}' (fields: {present})")
        values.append(row[name])
    for name, value in ((text_field, values[0]), (pair_field, values[1])):
        if name is not None and not isinstance(value, str):
            raise DistillError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return Example(values[0], values[1], parse_label(values[2], where, label_field, from_csv), where)


def read_csv(path: Path, fields: tuple[str, str | None, str]) -> list[Example]:
    """Rows of a CSV file with a header; a row is named by its data row number (1-based) and line."""
    examples = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            for number, row in enumerate(reader, start=1):
                where = f"{path}, row {number} (line {reader.line_num})"
                examples.append(_example(row, where, fields, from_csv=True))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DistillError(f"cannot read {path} as CSV: {err}") from None
    return examples


def read_jsonl(path: Path, fields: tuple[str, str | None, str]) -> list[Example]:
    """One JSON object a line (blank lines skipped); a row is named by its line."""
    examples = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DistillError(f"cannot read {path} as UTF-8 text: {err}") from None
    for where, row in json_objects(text, path):
        examples.append(_example(row, where, fields))
    return examples


def read_hf(path: Path, hf_format: str, fields: tuple[str, str | None, str], cache_dir: Path) -> list[Example]:
    """Rows of a local file read by `datasets.load_dataset(hf_format, data_files=...)`; a row is named by number."""
    import datasets  # noqa: PLC0415  (heavy: only this source needs it)

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(hf_format, data_files=[str(path)], split="train", cache_dir=str(cache_dir))
    except Exception as err:  # noqa: BLE001  (datasets raises many kinds: report them as one)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DistillError(f"cannot read {path} as {hf_format} with datasets: {reason}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    wanted = [name for name in fields if name is not None]
    for name in wanted:
        if name not in loaded.column_names:
            raise DistillError(f"{path}: no column '{name}' (columns: {', '.join(loaded.column_names)})")
    return [
        _example(row, f"{path}, row {number}", fields, from_csv=hf_format == "csv")
        for number, row in enumerate(loaded.select_columns(wanted), start=1)
    ]


def file_format(path: Path, hf_format: str | None) -> str:
    """How a file is read: `hf:<format>` when `hf_format` is set, else csv or jsonl by its suffix."""
    if hf_format is not None:
        return f"hf:{hf_format}"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DistillError(
        f"{path}: cannot tell the format from the suffix '{suffix}' (.csv or .jsonl; set hf_format to read "
        "json, csv or parquet files with datasets)"
    )


def read_file(
    path: str | Path, hf_format: str | None, fields: tuple[str, str | None, str], cache_dir: Path
) -> list[Example]:
    """The examples of one local file, refused in one line when it is missing or has none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"data file not found: {path}")
    kind = file_format(path, hf_format)
    if kind == "csv":
        examples = read_csv(path, fields)
    elif kind == "jsonl":
        examples = read_jsonl(path, fields)
    else:
        examples = read_hf(path, hf_format, fields, cache_dir)
    if not examples:
        raise DistillError(f"{path}: no examples (the file has no rows)")
    return examples
