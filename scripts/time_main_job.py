"""Wall time of the default main job, from nothing (data generated, teacher and baseline
trained) and then again with the data and the teacher/baseline cache in place.

    python scripts/time_main_job.py            # runs `distill-train` twice in a fresh folder
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_job(root: Path, name: str) -> tuple[float, dict]:
    out = root / name
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "distill.train", f"paths.root_dir={root}", f"hydra.run.dir={out}"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start, json.loads((out / "report.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("cold", "warm"):
            seconds, report = run_job(root, name)
            accuracy = {r["model"]: round(r["accuracy"], 4) for r in report["models"]}
            print(f"{name}: {seconds:.1f} s  accuracy {accuracy}  gap closed {report['summary']['gap_closed']:.3f}")


if __name__ == "__main__":
    main()
