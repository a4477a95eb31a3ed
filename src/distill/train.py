"""`distill-train`: compose the config, then hand over to the pipeline."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR, guarded, run_task
from distill.console import install_log_filters


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Train (or reuse) the teachers and the baseline, distill the student, write the report."""
    install_log_filters()  # also here: a SLURM job runs this function without main()
    from distill.extras import apply_extras  # heavy imports only once the command line is parsed
    from distill.spine import run

    apply_extras(cfg)
    report = run_task(run, cfg) or {}
    return optimized(report, cfg.get("optimized_metric"))  # what a sweeper (hparams_search=...) optimises


def optimized(report: dict, metric: Any) -> Any:
    """The report's value at `metric` (a key, dotted for a nested one), or a tuple for a list of them."""
    if not metric or not report:
        return None
    if not isinstance(metric, str):
        return tuple(optimized(report, m) for m in metric)
    value: Any = report
    for key in metric.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def main() -> None:
    """Entry point (`distill-train`)."""
    install_log_filters()  # Lightning's banner and srun hint, submitit's sacct errors (distill.console)
    guarded(hydra_main)


if __name__ == "__main__":
    main()
