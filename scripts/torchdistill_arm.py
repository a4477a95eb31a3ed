"""The `torchdistill` arm of scripts/bench_step.py: the same distillation run by torchdistill 1.1.5.

Needs torchdistill (`pip install -e ".[bench]"`); bench_step.py offers this arm only when it imports.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torchdistill.core.distillation import get_distillation_box

from distill.assembly import build_net


def torchdistill_fit(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> tuple[list[float], nn.Module]:
    """Distil a fresh student from `teacher` with torchdistill's DistillationBox; (epoch times, trained student).

    What runs, as a torchdistill user sets it up (the models passed as objects, everything else from config dicts):

    - data: `{"train": TensorDataset(x_train, y_train)}` from `dm`, on the CPU. The box builds the loader with
      torchdistill's `build_data_loader`: the dataset wrapped in its `BaseDatasetWrapper` (each sample becomes
      `(x, y, {})`, the supplementary dict its KD loop passes along), a `torch.utils.data.RandomSampler`, a plain
      `DataLoader` of `batch` samples, no workers, the last partial batch kept. No adapter was needed.
    - models: the student built by `build_net(cfg.student.net, ...)` from `cfg.seed` (the initialisation every arm
      starts from), the frozen teacher as given (`requires_grad: False`: the box runs it under `torch.no_grad()`
      at every step); both through `forward_batch_only`, no forward hooks, no wrapper (no DataParallel / DDP).
    - loss: `WeightedSumLoss` with the single term `KDLoss` on the two models' outputs (module path `.`):
      alpha 0.1 × cross-entropy + beta 0.9 × T² × KL(softmax(teacher/T) ‖ softmax(student/T)) at T = 4,
      `batchmean`; no model-loss term. The same loss as the other arms.
    - optimiser: torchdistill's `SGD` (`torch.optim.SGD` from its registry) at `cfg.student.fit.optimizer.lr`,
      no momentum, no weight decay, no scheduler, no gradient accumulation or clipping.
    - loop: the training part of torchdistill's own example driver (examples/torchvision/image_classification.py,
      `train()` / `train_one_epoch()`): per epoch `box.pre_epoch_process(epoch=...)`, then for each
      `(sample_batch, targets, supp_dict)` of `box.train_data_loader`: move to `device`,
      `loss = box.forward_process(...)` (teacher forward, student forward, the criterion),
      `box.post_forward_process(loss=loss)` (backward, `optimizer.step()`, `optimizer.zero_grad()`), then
      `box.post_epoch_process()`. Left out of that example: its `MetricLogger` (progress lines, `loss.item()` and
      the NaN check every step), the validation pass and the checkpointing, which the other arms do not do either.

    An epoch's time is that of its training iterations (the loop over the loader), as for the other arms, with a
    CUDA synchronisation at both ends. `box.clean_modules()`, which the example calls at the end, is not called:
    it would set `requires_grad` back on every parameter of the teacher the benchmark shares between arms, and
    there are no forward hooks to remove.
    """
    student = build_net(cfg.student.net, "student", cfg.seed, dm)
    train = torch.utils.data.TensorDataset(dm.model_inputs("train", dm.num_train), dm.tensors["y_train"])
    dataset_dict = {"train": train}
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch, "num_workers": 0, "drop_last": False},
        },
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "SGD", "kwargs": {"lr": float(cfg.student.fit.optimizer.lr)}},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".", "student_module_io": "output",
                                "teacher_module_path": ".", "teacher_module_io": "output",
                                "temperature": 4.0, "alpha": 0.1, "beta": 0.9, "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }  # fmt: skip
    box = get_distillation_box(teacher, student, dataset_dict, train_config, device, None, False, 1)
    times = []
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        box.post_epoch_process()
    return times, box.student_model


def torchdistill_epochs(cfg, dm, teacher, epochs: int, batch: int, device: torch.device) -> list[float]:
    """Epoch times of `torchdistill_fit` (see there for exactly what runs); the first is a warm-up."""
    return torchdistill_fit(cfg, dm, teacher, epochs, batch, device)[0]
