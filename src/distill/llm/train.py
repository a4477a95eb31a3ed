"""`distill-lm`: compose the LM config (configs/lm.yaml), then hand over to the LM pipeline."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR, guarded, run_task
from distill.console import install_log_filters


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="lm")
def hydra_main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Train (or load) the teacher and the student alone, distil the student, write the report."""
    install_log_filters()  # also here: a SLURM job runs this function without main()
    from distill.extras import apply_extras
    from distill.spine import run

    apply_extras(cfg)
    from distill.train import optimized

    report = run_task(run, cfg) or {}
    return optimized(report, cfg.get("optimized_metric"))


def main() -> None:
    """Entry point (`distill-lm`)."""
    install_log_filters()  # Lightning's banner and srun hint, submitit's sacct errors (distill.console)
    guarded(hydra_main)


if __name__ == "__main__":
    main()
