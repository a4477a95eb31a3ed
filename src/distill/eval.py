"""`distill-eval ckpt_path=...`: evaluate a saved student on a test set."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR, guarded, run_task


def evaluate(cfg: DictConfig) -> dict:
    """Rebuild the checkpoint's network, load its weights and measure it like the main job does.

    An exported `.onnx` artifact is run with ONNX Runtime; it carries no data config, so
    `data=` must name the dataset.
    """
    from pathlib import Path

    from omegaconf import OmegaConf

    from distill.checkpoints import load_weights, read_checkpoint
    from distill.errors import DistillError
    from distill.pipeline import build, build_data
    from distill.report import measure_models, publish_report

    out = Path(cfg.paths.output_dir)
    if str(cfg.ckpt_path).endswith(".onnx"):
        artifact = Path(cfg.ckpt_path).expanduser()
        if not artifact.is_file():
            raise DistillError(f"ONNX artifact not found: {artifact}")
        if cfg.get("data") is None:
            raise DistillError("an .onnx artifact carries no data config: name the dataset, e.g. data=mnist1d")
        dm = build_data(cfg)
        rows = measure_models({"student": artifact}, dm, out / "models", cfg.report, teacher_names=[])
        return publish_report(rows, out, [], title=f"evaluation of {artifact}")

    checkpoint = read_checkpoint(cfg.ckpt_path)
    if "net" not in checkpoint or "data" not in checkpoint:
        raise DistillError(
            f"{cfg.ckpt_path} is not a student file written by distill-train (no 'net'/'data' config in it)"
        )
    if cfg.get("data") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.data = OmegaConf.create(checkpoint["data"])
    dm = build_data(cfg)
    net = build(OmegaConf.create(checkpoint["net"]), "the checkpoint's network")
    load_weights(net, cfg.ckpt_path, "student")
    rows = measure_models({"student": net}, dm, out / "models", cfg.report, teacher_names=[])
    return publish_report(rows, out, [], title=f"evaluation of {cfg.ckpt_path}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> float | None:
    """Print and write the test metrics, size, latency and FLOPs of a saved student."""
    report = run_task(evaluate, cfg)
    return report["models"][0]["accuracy"] if report else None


def main() -> None:
    """Entry point (`distill-eval`)."""
    guarded(hydra_main)


if __name__ == "__main__":
    main()
