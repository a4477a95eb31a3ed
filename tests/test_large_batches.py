"""What keeps expensive terms affordable at the student's large batches, and the CPU settings."""

from __future__ import annotations

import platform

import pytest
import torch
from tests.builders import built_crd, crd_view, step_view

from distill.losses.relation import SPLoss, sp_loss
from distill.runtime import flush_denormals, tune_cpu_allocator


def sp_view(s: torch.Tensor, t: torch.Tensor):
    logits = torch.zeros(len(s), 3)
    return step_view(logits, teachers={"t": logits}, student_features={"s": s}, teacher_features={"t": {"t": t}})


def test_relation_terms_use_the_first_max_samples_rows() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 4, generator=g), torch.randn(8, 6, generator=g)
    subset = SPLoss("s", "t", max_samples=3)(sp_view(s, t))
    assert torch.isclose(subset, sp_loss(s[:3], t[:3]))
    assert not torch.isclose(subset, sp_loss(s, t))
    assert torch.isclose(SPLoss("s", "t", max_samples=None)(sp_view(s, t)), sp_loss(s, t))


def test_crd_contrasts_a_subset_but_updates_every_bank_row() -> None:
    view = crd_view(batch=4)
    term = built_crd(view, max_samples=2)
    term.train()
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    loss = term(view)
    assert torch.isfinite(loss)
    for bank, before in ((term.memory_s, before_s), (term.memory_t, before_t)):
        changed = (bank != before).any(1).nonzero().flatten().tolist()
        assert changed == sorted(view.index.tolist())  # all four rows, not only the two contrasted


def test_subnormal_floats_are_flushed() -> None:
    try:
        assert flush_denormals()
        assert torch.tensor(1e-40).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    assert torch.tensor(1e-40).item() != 0.0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_accepts_the_thresholds() -> None:
    assert tune_cpu_allocator()
