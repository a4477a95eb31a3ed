"""Per-step cost of a distillation epoch: distill against two hand-written loops, side by side in one process.

The workload: 20,000 training samples of 40 features, 10 classes; the student an MLP 40-100-100-10, the frozen
teacher an MLP 40-512-512-10 (the `mlp` and `mlp_large` configs); hard-label cross-entropy ×0.1 + Hinton KD at
T=4 ×0.9; SGD. Arms, each from the same student initialisation, alternating which goes first in every round:

  best    the best hand loop: teacher logits computed once, batches cut from in-memory tensors by index
  naive   the loop most people write: a DataLoader over a TensorDataset, the teacher run at every step
  lightning the best loop's step in a bare LightningModule under a Trainer with no callbacks: what Lightning's
          own per-step machinery costs (hook dispatch, the loop, the strategy and precision plugin)
  distill `distill-train`'s student stage (DistillationModule under Lightning's Trainer with the job's default
          callbacks: its progress bar and end-of-epoch checkpoint; no validation)
  torchdistill  torchdistill 1.1.5's DistillationBox with its KDLoss, driven by the loop of its example script
          (scripts/torchdistill_arm.py); offered only when torchdistill imports (`pip install -e ".[bench]"`),
          and run only when named: --arms best torchdistill distill

Prints the median epoch time of each arm at each batch size, ms per step, and each arm against the best loop.

    python scripts/bench_step.py                          # batches 64, 100, 1024 on the CPU
    python scripts/bench_step.py --device cuda --rounds 3 # the same on a GPU (gpu_check.sh)

Where distill's extra time per step goes (py-spy samples of the distill arm, grouped by scripts/step_profile.py):

    py-spy record -r 250 -f raw -o step.txt -- python scripts/bench_step.py --arms distill --batches 100 --rounds 1 --epochs 10
    python scripts/step_profile.py step.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).parent))
from bench_overhead import EpochTimer  # noqa: E402 - the sibling script
from distill.assembly import build_net, build_terms, make_trainer  # noqa: E402
from distill.cli import CONFIG_DIR  # noqa: E402
from distill.extras import QUIET  # noqa: E402
from distill.runtime import flush_denormals, tune_cpu_allocator  # noqa: E402
from distill.tasks import ClassificationTask  # noqa: E402

HARD, KD, T = 0.1, 0.9, 4.0


def workload(folder: Path, n: int = 20_000) -> Path:
    """A 40-feature, 10-class file whose training split (80%) holds `n` samples."""
    rng = np.random.default_rng(0)
    total = int(n / 0.8)
    x = rng.standard_normal((total, 40)).astype(np.float32)
    y = (x[:, :10].argmax(1)).astype(np.int64)
    path = folder / "workload.npz"
    np.savez(path, x=x, y=y)
    return path


def loss_of(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    kd = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher_logits / T, -1), reduction="batchmean",
                  log_target=True) * T * T  # fmt: skip
    return HARD * F.cross_entropy(logits, y) + KD * kd


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_epochs(cfg, dm, epochs: int, device: torch.device, batches: Callable) -> list[float]:
    """Epoch times of a hand-written loop over `batches()`: (inputs, labels, teacher logits) per step."""
    student = build_net(cfg.student.net, "student", cfg.seed, dm).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.student.fit.optimizer.lr)
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        for x, y, teacher_logits in batches():
            loss = loss_of(student(x), y, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def best_epochs(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> list[float]:
    x, y = dm.model_inputs("train", dm.num_train).to(device), dm.tensors["y_train"].to(device)
    with torch.no_grad():
        cached = teacher(x)

    def batches():  # index slices of in-memory tensors, the teacher's logits looked up
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            yield x.index_select(0, idx), y.index_select(0, idx), cached.index_select(0, idx)

    return hand_epochs(cfg, dm, epochs, device, batches)


def naive_epochs(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> list[float]:
    data = torch.utils.data.TensorDataset(dm.model_inputs("train", dm.num_train), dm.tensors["y_train"])
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)

    def batches():  # a DataLoader, the teacher run at every step
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            with torch.no_grad():
                teacher_logits = teacher(xb)
            yield xb, yb, teacher_logits  # outside no_grad: the consumer's step runs while this waits

    return hand_epochs(cfg, dm, epochs, device, batches)


def distill_epochs(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> list[float]:
    student = build_net(cfg.student.net, "student", cfg.seed, dm)
    module = ClassificationTask().module(cfg, student, cfg.student.fit, dm, "student", {"mlp_large": teacher},
                                         build_terms(cfg))  # fmt: skip
    trainer = make_trainer(cfg, "student", epochs, loggers=[])
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, dm.distill_dataloader(batch), dm.val_dataloader())
    return timer.times


class BareStep(L.LightningModule):
    """The best loop's step in a LightningModule and nothing else: manual optimisation, no logging."""

    def __init__(self, net: torch.nn.Module, cached: torch.Tensor, lr: float) -> None:
        super().__init__()
        self.net, self.cached, self.lr = net, cached, lr
        self.automatic_optimization = False

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = loss_of(self.net(batch["x"]), batch["y"], self.cached.index_select(0, batch["index"]))
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def lightning_epochs(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> list[float]:
    """What Lightning's Trainer costs by itself: the best loop's step in a bare LightningModule, the same batches
    as distill (TensorBatches), no callback, progress bar, checkpoint or logger."""
    loader = dm.distill_dataloader(batch)
    with torch.no_grad():
        cached = teacher(loader.x.to(device))
    student = build_net(cfg.student.net, "student", cfg.seed, dm)
    timer = EpochTimer()
    trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=epochs, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tempfile.mkdtemp(prefix="bench_step_bare_"))  # fmt: skip
    trainer.fit(BareStep(student, cached, cfg.student.fit.optimizer.lr), loader)
    return timer.times


ARMS: dict[str, Callable] = {
    "best": best_epochs, "naive": naive_epochs, "lightning": lightning_epochs, "distill": distill_epochs,
}  # fmt: skip
DEFAULT_ARMS = list(ARMS)  # the optional arm below runs only when asked for: --arms ... torchdistill
try:  # the optional arm: `pip install -e ".[bench]"`
    import torchdistill  # noqa: F401
except ImportError:
    pass
else:
    from torchdistill_arm import torchdistill_epochs  # noqa: E402 - the sibling script

    ARMS["torchdistill"] = torchdistill_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 100, 1024])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per batch size; each fits every arm")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is a warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    args = parser.parse_args()
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    device = torch.device(args.device)
    folder = Path(tempfile.mkdtemp(prefix="bench_step_"))
    overrides = [
        "data=file", f"data.path={workload(folder)}", "data.standardize=false", "data.val_fraction=0.1",
        "data.test_fraction=0.1", "teacher=[mlp_large]", "student=mlp", "student.fit.optimizer._target_=torch.optim.SGD",
        "~student.fit.optimizer.weight_decay", "student.fit.scheduler=null", f"paths.output_dir={folder}/run",
        "+trainer.limit_val_batches=0", "cache_teacher_outputs=true",
        *(["trainer=gpu"] if device.type == "cuda" else []),
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    tune_cpu_allocator()
    flush_denormals()
    dm = ClassificationTask().build_data(cfg)
    teacher = build_net(cfg.teacher.mlp_large.net, "teacher", cfg.seed, dm).to(device).eval().requires_grad_(False)
    print(f"{dm.num_train:,} samples, device {device}, {torch.get_num_threads()} threads\n")
    print("| batch | steps | arm | median epoch (s) | ms per step | against the best loop |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        times: dict[str, list[float]] = {arm: [] for arm in args.arms}
        for r in range(args.rounds):
            order = args.arms if r % 2 == 0 else args.arms[::-1]
            for arm in order:
                times[arm] += ARMS[arm](cfg, dm, teacher, args.epochs, batch, device)[1:]
        steps = -(-dm.num_train // batch)
        best = statistics.median(times["best"]) if "best" in times else float("nan")
        for arm, values in times.items():
            median = statistics.median(values)
            print(f"| {batch} | {steps} | {arm} | {median:.3f} | {1000 * median / steps:.3f} | {median / best:.2f}× |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
