"""JSON lines: one JSON object a line, blank lines skipped, every row named by its file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from distill.errors import DistillError


def json_objects(text: str, path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for each non-blank line of `text` (read from `path`): `where` is "<path>, line N"; a line
    that is not JSON, or not a JSON object, is refused in one line naming it."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DistillError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DistillError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row
