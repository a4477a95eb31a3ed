"""Vision speed and a quick CIFAR-shaped run.

Throughput (default): training images per second of ResNet-32x4 -> ResNet-8x4 KD against
ResNet-8x4 trained alone, with the same data, batch, precision and memory format, alternating in
rounds in one process (median per arm). Their ratio is what the teacher costs. The data are
random CIFAR-100-shaped images held where the models run, augmented on that device.

    python scripts/bench_vision.py                                  # CPU, reduced: batch 32, 8 steps
    python scripts/bench_vision.py --device cuda --batch 64 --steps 200 --precision bf16-mixed \\
        --channels-last --compile                                   # on a GPU
    python scripts/bench_vision.py --quick                          # experiment=cifar_quick end to end
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import lightning as L
import torch

from bench_overhead import EpochTimer  # the sibling script
from distill.data.vision import ImageBatches
from distill.extras import QUIET
from distill.losses import HardLabelLoss, KDLoss
from distill.modules import DistillationModule, SupervisedModule
from distill.nets.cifar import resnet8x4, resnet32x4
from distill.runtime import flush_denormals, tune_cpu_allocator


def throughput(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = args.batch * args.steps
    x = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 100, (n,), device=device)
    shape = (3, args.size, args.size)
    optimizer = lambda: lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)  # noqa: E731

    def loader() -> ImageBatches:
        mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
        return ImageBatches(x, y, args.batch, mean, std, augment=True, channels_last=args.channels_last, shuffle=True)

    teacher = resnet32x4(100, shape)
    arms = {
        "student alone": SupervisedModule(resnet8x4(100, shape), optimizer(), 100),
        "KD from resnet32x4": DistillationModule(
            resnet8x4(100, shape), {"resnet32x4": teacher},
            {"hard": HardLabelLoss(weight=0.1), "kd": KDLoss(weight=0.9, temperature=4.0)},
            optimizer=optimizer(), num_classes=100, example_input=loader().inputs(0, 2).cpu(),
            cache_teacher_outputs=False,
        ),
    }  # fmt: skip
    for module in arms.values():
        nets = [module.net, *getattr(module, "teachers", {}).values()]
        for net in nets:
            if args.channels_last:
                net.to(memory_format=torch.channels_last)
            if args.compile:
                net.compile()
    timers = {name: EpochTimer() for name in arms}
    for _ in range(args.rounds):
        for name, module in arms.items():
            trainer = L.Trainer(
                accelerator=device.type, devices=1, precision=args.precision, max_epochs=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, callbacks=[timers[name]],
            )  # fmt: skip
            trainer.fit(module, loader())
    rates = {}
    for name, timer in timers.items():
        per_round = [args.batch * args.steps / t for t in timer.times[1:]]  # the first round warms up
        rates[name] = statistics.median(per_round)
        print(f"{name:20s} {rates[name]:9.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in per_round)})")
    alone, kd = rates["student alone"], rates["KD from resnet32x4"]
    print(f"\nKD / student-alone throughput: {kd / alone:.3f} (the teacher costs {alone / kd:.2f}x the time per image)")
    print(f"device {device}, batch {args.batch}, {args.steps} steps x {args.rounds - 1} timed rounds, "
          f"{args.size}x{args.size} images, precision {args.precision}, channels_last {args.channels_last}, "
          f"compile {args.compile}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="run experiment=cifar_quick through distill-train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="training steps per round and arm")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per arm; the first is not timed")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args, overrides = parser.parse_known_args()
    if args.quick:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "distill.train", "experiment=cifar_quick", *overrides])
        print(f"experiment=cifar_quick: exit {result.returncode} in {time.perf_counter() - start:.0f} s")
        raise SystemExit(result.returncode)
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    tune_cpu_allocator()
    flush_denormals()
    throughput(args)


if __name__ == "__main__":
    main()
