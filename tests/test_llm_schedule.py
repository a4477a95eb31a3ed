"""Learning-rate schedules stepped per optimiser step (`fit.scheduler_interval: step`): the scheduler is
built with the run's total steps and steps once per optimiser step; bad intervals are refused."""

from __future__ import annotations

import functools

import pytest
import torch
from tests.builders import quiet_trainer
from tests.conftest import compose_config

pytest.importorskip("transformers")

from distill.errors import DistillError  # noqa: E402
from distill.llm.models import causal_lm  # noqa: E402
from distill.llm.module import LMDistillationModule  # noqa: E402
from distill.tasks import CausalLMTask  # noqa: E402


def batches(n: int, rows: int = 4, length: int = 8, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (rows, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


class Batches:
    """An iterable of batches (a list would be taken for a list of data loaders)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def tiny_lm() -> torch.nn.Module:
    return causal_lm(64, model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_one_cycle_schedule_spans_the_runs_optimiser_steps(interval: str) -> None:
    lr = 0.01
    if interval == "step":
        factory = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=lr, pct_start=0.25)
    else:
        factory = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=3)
    module = LMDistillationModule(tiny_lm(), {}, {}, functools.partial(torch.optim.AdamW, lr=lr), scheduler=factory)
    module.scheduler_interval = interval
    lrs: list[float] = []

    original = module.on_train_batch_start

    def record(batch, batch_idx):  # noqa: ANN001, ANN202
        lrs.append(module.optimizers().param_groups[0]["lr"])
        return original(batch, batch_idx)

    module.on_train_batch_start = record
    trainer = quiet_trainer(max_epochs=3, limit_val_batches=0)
    trainer.fit(module, Batches(batches(4)))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert len(lrs) == 12
    if interval == "step":
        assert scheduler.total_steps == 12  # 3 epochs x 4 batches: built with the run's optimiser steps
        assert lrs[0] == pytest.approx(lr / 25)  # OneCycleLR starts at max_lr / div_factor
        assert max(lrs) == pytest.approx(lr, rel=0.05)  # the peak at the end of the warm-up (a quarter)
        assert lrs[2] > lrs[1] > lrs[0] and lrs[11] < lrs[6]  # warm-up, then annealing, step by step
    else:
        assert lrs[:4] == [lr] * 4 and len(set(lrs[4:8])) == 1 and lrs[4] < lr  # changes once an epoch only


def test_an_unknown_interval_is_refused(tmp_path) -> None:  # noqa: ANN001
    cfg = compose_config([f"paths.root_dir={tmp_path}", "+lm_student.fit.scheduler_interval=batch"], "lm")
    fit = cfg.lm_student.fit
    dm = type("DM", (), {"pad_token_id": 0, "eos_token_id": 1})()
    with pytest.raises(DistillError, match="student: fit.scheduler_interval must be epoch or step, got 'batch'"):
        CausalLMTask().module(cfg, tiny_lm(), fit, dm, "student")
