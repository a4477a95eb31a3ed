"""Every option of every config group composes, and everything it names can be instantiated."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from tests.conftest import compose_config

from distill.cli import CONFIG_DIR
from distill.errors import DistillError
from distill.losses import LossTerm

GROUPS = [
    "data",
    "teacher",
    "student",
    "distill",
    "compress",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "experiment",
    "extras",
    "hparams_search",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if group == "data" and option == "file":
        overrides.append("data.path=some.npz")
    if group == "data" and option == "text_files":
        overrides.append("data.train=some.csv")
    if group == "hparams_search":
        overrides = [o for o in overrides if not o.startswith("paths.")]  # a multirun: no fixed output dir
    cfg = compose_config(overrides)
    assert cfg.data._target_.startswith(("distill.data.", "distill.textcls."))
    assert cfg.distill and (cfg.student.net or cfg.student.cut)._target_  # a network, or the teacher's cut
    assert cfg.get("teacher") or cfg.born_again.generations > 0 or "byot" in cfg.distill  # teacherless runs
    OmegaConf.to_container(cfg.data, resolve=True)  # every interpolation of the data group resolves


def test_default_config_is_the_mnist1d_job(tmp_path: Path) -> None:
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    assert cfg.data._target_ == "distill.data.MNIST1DDataModule"
    assert list(cfg.teacher) == ["cnn"] and list(cfg.distill) == ["hard", "kd"]
    assert cfg.distill.kd.temperature == 4.0
    assert "csv" in cfg.logger


@pytest.mark.parametrize("option", options("teacher") + options("student"))
def test_every_network_instantiates_and_predicts(option: str, tmp_path: Path) -> None:
    group = "teacher" if option in options("teacher") else "student"
    cfg = compose_config([f"{group}={option}", f"paths.output_dir={tmp_path}"])
    node = cfg.teacher[option].net if group == "teacher" else cfg.student.net
    if node is None:  # student=pruned: the first teacher, cut (sized from the budget, here a ratio)
        cut = hydra.utils.instantiate(cfg.student.cut, ratio=0.5)
        with open_dict(cfg):
            cfg.data.input_shape, cfg.data.num_classes = [40], 10
        teacher = hydra.utils.instantiate(cfg.teacher.cnn.net)
        net, _ = cut.cut(teacher, [(torch.randn(8, 40), torch.randint(0, 10, (8,)))], torch.randn(1, 40), 10)
        assert net(torch.randn(3, 40)).shape == (3, 10)
        return
    if node._target_ == "distill.textcls.models.pretrained_classifier":  # a local folder the user gives
        from distill.assembly import build

        with pytest.raises(DistillError, match="pretrained folder not found"):
            build(node, "teacher", path=str(tmp_path / "missing"), num_labels=3)
        return
    if node._target_.startswith("distill.textcls."):  # text: [batch, 3, length] integers (ids, mask, types)
        net = hydra.utils.instantiate(node, vocab_size=100, num_labels=3)
        x = torch.stack(
            [torch.randint(0, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.long)],
            1,
        )
        assert net(x).shape == (2, 3)
        return
    images = not node._target_.startswith(("distill.nets.MLP", "distill.nets.ConvNet1d"))
    shapes = ((3, 32, 32), (1, 28, 28)) if images else ((40,), (64,))
    for shape in shapes:
        if node._target_.startswith("torchvision") and shape[0] == 1:
            continue  # torchvision's ImageNet models take 3 channels
        with open_dict(cfg):
            cfg.data.input_shape, cfg.data.num_classes = list(shape), 10
        net = hydra.utils.instantiate(node)
        assert net(torch.randn(3, *shape)).shape == (3, 10), shape


@pytest.mark.parametrize("option", options("distill"))
def test_every_loss_term_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"distill=[{option}]", f"paths.output_dir={tmp_path}"])
    if cfg.distill[option]._target_.startswith("distill.losses.transformer."):  # settings read from the models
        from distill.tasks.text_classification import TextClassificationTask
        from distill.textcls.models import bert_classifier

        student = bert_classifier(vocab_size=50, num_labels=3, hidden_size=8, heads=2, num_layers=1)
        teacher = bert_classifier(vocab_size=50, num_labels=3, hidden_size=16, heads=2, num_layers=2)
        TextClassificationTask.fill_term_settings(cfg, student, {"t": teacher})
    term = hydra.utils.instantiate(cfg.distill[option])
    assert isinstance(term, LossTerm) and term.weight >= 0


@pytest.mark.parametrize("option", [o for o in options("trainer") if o != "default"])
def test_every_trainer_config_is_a_trainer_config(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"trainer={option}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if cfg.trainer.accelerator == "cpu":  # the others need hardware this machine lacks
        trainer = hydra.utils.instantiate(cfg.trainer, max_epochs=1, logger=False)
        assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"logger={option}", f"paths.output_dir={tmp_path}"])
    loggers = [hydra.utils.instantiate(n) for n in cfg.logger.values()]
    assert loggers and all(hasattr(lg, "log_metrics") for lg in loggers)


@pytest.mark.parametrize("option", options("callbacks"))
def test_every_callback_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"callbacks={option}", f"paths.output_dir={tmp_path}"])
    callbacks = [hydra.utils.instantiate(n) for n in cfg.callbacks.values()]
    assert all(isinstance(cb, L.Callback) for cb in callbacks)


def test_multi_select_teachers_and_terms(tmp_path: Path) -> None:
    cfg = compose_config(["teacher=[cnn,cnn_small]", "distill=[hard,kd,fitnet]", f"paths.output_dir={tmp_path}"])
    assert list(cfg.teacher) == ["cnn", "cnn_small"]
    assert list(cfg.distill) == ["hard", "kd", "fitnet"]


def test_any_module_class_can_be_the_student_by_target(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "data=digits",
            "student.net._target_=torch.nn.Linear",
            "~student.net.input_shape",
            "~student.net.num_classes",
            "~student.net.hidden",
            "+student.net.in_features=64",
            "+student.net.out_features=10",
            f"paths.output_dir={tmp_path}",
        ]
    )
    net = hydra.utils.instantiate(cfg.student.net)
    assert isinstance(net, torch.nn.Linear) and net.out_features == 10


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_config(["ckpt_path=x.ckpt", f"paths.output_dir={tmp_path}"], name="eval")
    assert cfg.ckpt_path == "x.ckpt" and cfg.get("data") is None
    cfg = compose_config(["ckpt_path=x.ckpt", "data=digits", f"paths.output_dir={tmp_path}"], name="eval")
    assert cfg.data._target_ == "distill.data.DigitsDataModule"


@pytest.mark.parametrize("option", options("compress"))
def test_every_compression_stage_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"compress=[{option}]", f"paths.output_dir={tmp_path}"])
    stage = hydra.utils.instantiate(cfg.compress[option])
    assert callable(stage.apply)


@pytest.mark.parametrize(
    "option", [o for o in options("experiment") if o.startswith("cifar100_") and o != "cifar100_base"]
)
def test_cifar100_experiments_carry_the_published_recipe(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={option}", f"paths.output_dir={tmp_path}"])
    assert cfg.data.dataset == "cifar100" and cfg.data.val_size == 0 and cfg.data.augment
    student_lr = 0.01 if cfg.student.net._target_.endswith(("shufflenetv2", "mobilenetv2")) else 0.05
    recipes = [next(iter(cfg.teacher.values())).fit, cfg.student.fit, cfg.student.baseline]
    for recipe, lr in zip(recipes, (0.05, student_lr, student_lr), strict=True):
        assert recipe.batch_size == 64 and recipe.epochs == 240
        assert recipe.optimizer._target_ == "torch.optim.SGD" and recipe.optimizer.lr == lr
        assert recipe.optimizer.momentum == 0.9 and recipe.optimizer.weight_decay == 5e-4
        assert list(recipe.scheduler.milestones) == [150, 180, 210] and recipe.scheduler.gamma == 0.1
    method = option.rsplit("_", 1)[1]
    assert method in cfg.distill and "hard" in cfg.distill
    if method == "kd":
        assert (cfg.distill.hard.weight, cfg.distill.kd.weight, cfg.distill.kd.temperature) == (0.1, 0.9, 4.0)
    if method == "dkd":
        beta = {"res56_res20": 2.0, "wrn40_2_wrn16_2": 6.0, "vgg13_vgg8": 6.0}.get(option[9:-4], 8.0)
        assert cfg.distill.dkd.beta == beta and cfg.distill.dkd.warmup_epochs == 20
    if method == "crd":
        assert cfg.distill.crd.weight == 0.8 and cfg.distill.crd.num_negatives == 16384
