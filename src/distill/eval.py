"""`distill-eval ckpt_path=...`: evaluate a saved student on a test set."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR, guarded, run_task
from distill.console import install_log_filters
from distill.cut import fit_shapes


def evaluate(cfg: DictConfig) -> dict:
    """Rebuild the checkpoint's network, load its weights and measure it like the main job does.

    An exported `.onnx` artifact is run with ONNX Runtime; it carries no data config, so
    `data=` must name the dataset, whose sample shape must be the one the artifact takes.

    Both take the data's features as read: a student of standardised data applies the statistics
    stored with it (in student.ckpt's weights, or as the first operations of the ONNX graph), never
    statistics recomputed from the data given here.
    """
    from pathlib import Path

    from omegaconf import OmegaConf

    from distill.assembly import build
    from distill.checkpoints import load_weights, read_checkpoint
    from distill.compress import deploy
    from distill.data.base import attach_standardization
    from distill.errors import DistillError
    from distill.report import publish_report
    from distill.spine import measure
    from distill.tasks import ClassificationTask

    task = ClassificationTask()

    def measured(model: object, dm: object) -> list:
        return measure(task, {"student": model}, {"student": "student"}, dm, cfg, out, teacher_names=[])

    def names(dm: object, fallback: object = None) -> dict:
        class_names = fallback or getattr(dm, "class_names", None)
        return {"class_names": list(class_names)} if class_names else {}

    def data_name(dm: object) -> str:
        return f"the data ({getattr(dm, 'source', None) or cfg.data.get('_target_')})"

    out = Path(cfg.paths.output_dir)
    if str(cfg.ckpt_path).endswith(".onnx"):
        artifact = Path(cfg.ckpt_path).expanduser()
        if not artifact.is_file():
            raise DistillError(f"ONNX artifact not found: {artifact}")
        if cfg.get("data") is None:
            raise DistillError("an .onnx artifact carries no data config: name the dataset, e.g. data=mnist1d")
        dm = task.build_data(cfg)
        deploy.check_onnx_input_shape(artifact, dm.input_shape, data_name(dm), name=str(artifact))
        rows = measured(artifact, dm)
        return publish_report(rows, out, [], title=f"evaluation of {artifact}", extra=names(dm))

    checkpoint = read_checkpoint(cfg.ckpt_path)
    if "net" not in checkpoint or "data" not in checkpoint:
        raise DistillError(
            f"{cfg.ckpt_path} is not a student file written by distill-train (no 'net'/'data' config in it)"
        )
    if cfg.get("data") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.data = OmegaConf.create(checkpoint["data"])
    dm = task.build_data(cfg)
    trained_shape = (checkpoint["data"] or {}).get("input_shape")
    if trained_shape and list(trained_shape) != list(dm.input_shape):
        raise DistillError(
            f"{cfg.ckpt_path} was trained on samples of shape {list(trained_shape)} but {data_name(dm)} "
            f"has samples of shape {list(dm.input_shape)}"
        )
    trained_names, data_names = checkpoint.get("class_names"), getattr(dm, "class_names", None)
    if trained_names and data_names and list(trained_names) != list(data_names):
        raise DistillError(
            f"{cfg.ckpt_path} was trained on the classes {list(trained_names)} but {data_name(dm)} "
            f"names the classes {list(data_names)}: its labels would be numbered differently"
        )
    net = build(OmegaConf.create(checkpoint["net"]), "the checkpoint's network")
    if checkpoint.get("cut"):  # a student cut from its teacher: the teacher's network, reshaped to the weights
        fit_shapes(net, checkpoint.get("state_dict", {}))
    if checkpoint.get("input_transform") == "standardize":  # the values come with the weights below
        state = checkpoint.get("state_dict", {})
        if "input_mean" not in state or "input_std" not in state:
            raise DistillError(f"{cfg.ckpt_path} says its input is standardised but holds no input_mean/input_std")
        attach_standardization(net, state["input_mean"], state["input_std"])
    load_weights(net, cfg.ckpt_path, "student")
    rows = measured(net, dm)
    extra = names(dm, checkpoint.get("class_names"))
    return publish_report(rows, out, [], title=f"evaluation of {cfg.ckpt_path}", extra=extra)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> float | None:
    """Print and write the test metrics, size, latency and FLOPs of a saved student."""
    report = run_task(evaluate, cfg)
    return report["models"][0]["accuracy"] if report else None


def main() -> None:
    """Entry point (`distill-eval`)."""
    install_log_filters()  # Lightning's banner and srun hint, submitit's sacct errors (distill.console)
    guarded(hydra_main)


if __name__ == "__main__":
    main()
