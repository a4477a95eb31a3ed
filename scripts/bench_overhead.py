"""Framework overhead: a distillation epoch under Lightning vs. a hand-written PyTorch loop.

Both run the same math (hard-label CE on the labelled rows + Hinton KD at T=4 against cached
teacher logits) on the same student initialisation and the same batches, in this one process,
alternating rounds. Neither side validates (the Lightning side runs with limit_val_batches=0):
the hand loop has no validation to compare with. Prints the median epoch time of each and
their ratio.

    python scripts/bench_overhead.py                 # default MNIST-1D job, 5 rounds of 3 epochs
    python scripts/bench_overhead.py --rounds 2 --epochs 2 data=digits
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from distill.assembly import build, build_net, build_terms, make_trainer
from distill.cli import CONFIG_DIR
from distill.data.base import UNLABELLED
from distill.extras import QUIET
from distill.runtime import flush_denormals, tune_cpu_allocator
from distill.tasks import ClassificationTask


class EpochTimer(Callback):
    """Wall time of each training epoch, from its start to the end of its last training batch.

    Lightning runs the epoch-end validation before `on_train_epoch_end`, so that hook would
    count validation too; the hand loop has none.
    """

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":  # GPU steps are asynchronous: wait for the batch to finish
            torch.cuda.synchronize()
        self.last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.times.append(self.last_batch_end - self.start)


def lightning_epochs(cfg, dm, teachers, epochs: int) -> list[float]:
    student = build_net(cfg.student.net, "student", cfg.seed, dm)
    module = ClassificationTask().module(cfg, student, cfg.student.fit, dm, "student", teachers, build_terms(cfg))
    trainer = make_trainer(cfg, "student", epochs, loggers=[build(n, "logger") for n in cfg.logger.values()])
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, dm.distill_dataloader(cfg.student.fit.get("batch_size")), dm.val_dataloader())
    return timer.times


def hand_epochs(cfg, dm, teachers, epochs: int) -> list[float]:
    student = build_net(cfg.student.net, "student", cfg.seed, dm)
    optimizer = build(cfg.student.fit.optimizer, "optimizer")(params=student.parameters())
    scheduler = build(cfg.student.fit.scheduler, "scheduler")(optimizer=optimizer)
    loader = dm.distill_dataloader(cfg.student.fit.get("batch_size"))
    teacher = next(iter(teachers.values())).eval()
    with torch.no_grad():  # the Lightning module caches teacher logits the same way
        cached = torch.cat([teacher(loader.x[i : i + 4096]) for i in range(0, len(loader.x), 4096)])
    hard_w, kd_w, T = cfg.distill.hard.weight, cfg.distill.kd.weight, cfg.distill.kd.temperature
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        student.train()
        for batch in loader:
            logits = student(batch["x"])
            y = batch["y"]
            hard = F.cross_entropy(logits, y, ignore_index=UNLABELLED, reduction="sum") / (y != UNLABELLED).sum().clamp(
                min=1
            )
            kd = (
                F.kl_div(
                    F.log_softmax(logits / T, -1),
                    F.log_softmax(cached.index_select(0, batch["index"]) / T, -1),
                    reduction="batchmean",
                    log_target=True,
                )
                * T
                * T
            )
            loss = hard_w * hard + kd_w * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round and side")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml")
    args = parser.parse_args()
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        overrides = ["paths.output_dir=logs/bench/overhead", "+trainer.limit_val_batches=0", *args.overrides]
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    tune_cpu_allocator()
    flush_denormals()  # as distill-train does; applies to both sides alike
    dm = ClassificationTask().build_data(cfg)
    teachers = {n: build_net(t.net, n, cfg.seed, dm) for n, t in cfg.teacher.items()}
    light, hand = [], []
    for r in range(args.rounds):
        sides = [(light, lightning_epochs), (hand, hand_epochs)]
        for times, run in sides if r % 2 == 0 else sides[::-1]:  # alternate which side goes first
            times += run(cfg, dm, teachers, args.epochs)[1:]  # first epoch of each fit: warm-up
        print(
            f"round {r + 1}: lightning {statistics.median(light):.3f} s/epoch, hand loop {statistics.median(hand):.3f} s/epoch"
        )
    ratio = statistics.median(light) / statistics.median(hand)
    steps = len(dm.distill_dataloader(cfg.student.fit.get("batch_size")))
    print(
        f"\n{steps} steps/epoch, batch {cfg.student.fit.get('batch_size') or cfg.data.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"median epoch: lightning {statistics.median(light):.3f} s, hand loop {statistics.median(hand):.3f} s")
    print(f"overhead ratio (lightning / hand loop): {ratio:.3f}")


if __name__ == "__main__":
    main()
