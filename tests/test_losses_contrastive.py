"""CRD (Tian et al. 2020): embedding heads, memory banks, the NCE loss and its use in the distillation module."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tests.builders import CRD_SAMPLES
from tests.builders import built_crd as built
from tests.builders import crd_view as make_view
from tests.conftest import compose_config
from torch import nn

from distill.data import TensorBatches
from distill.errors import DistillError
from distill.losses import KDLoss, StepView
from distill.losses.contrastive import CRDLoss, nce_loss
from distill.modules import DistillationModule
from distill.nets import MLP, ConvNet1d

N = CRD_SAMPLES  # training-set size of the hand-made views (make_view)
ADAM = functools.partial(torch.optim.Adam, lr=1e-2)


# -- building -------------------------------------------------------------------------------


def test_heads_are_built_from_the_flattened_feature_shapes_and_are_trainable() -> None:
    term = built()
    assert isinstance(term.embed_s, nn.Linear) and term.embed_s.weight.shape == (8, 6)
    assert isinstance(term.embed_t, nn.Linear) and term.embed_t.weight.shape == (8, 15)  # [3, 5] flattened
    heads = [*term.embed_s.parameters(), *term.embed_t.parameters()]
    assert all(p.requires_grad for p in heads)
    assert {id(p) for p in term.parameters()} == {id(p) for p in heads}  # the optimiser finds them on the term


def test_banks_hold_one_unit_row_per_sample_and_are_saved() -> None:
    term = built()
    for bank in (term.memory_s, term.memory_t):
        assert bank.shape == (N, 8)
        assert torch.allclose(bank.norm(dim=1), torch.ones(N), atol=1e-6)
    assert not torch.equal(term.memory_s, term.memory_t)
    assert set(term.state_dict()) >= {"memory_s", "memory_t", "log_z"}
    assert torch.isnan(term.log_z).all()  # Z is not known before the first training step


# -- the memory update ----------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.5, 0.0, 0.9])
def test_training_forward_moves_the_bank_rows_of_the_batch_by_the_momentum_formula(momentum: float) -> None:
    view = make_view()
    term = built(view, momentum=momentum).train()
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    with torch.no_grad():
        s, t = view.student_features["s"], view.teacher_features["cnn"]["t"]
        v_s = F.normalize(term.embed_s.weight @ s.T + term.embed_s.bias[:, None], dim=0).T
        v_t = F.normalize(term.embed_t.weight @ t.flatten(1).T + term.embed_t.bias[:, None], dim=0).T
    term(view)
    rows = view.index
    for bank, before, v in ((term.memory_s, before_s, v_s), (term.memory_t, before_t, v_t)):
        mixed = momentum * before[rows] + (1 - momentum) * v
        expected = mixed / mixed.norm(dim=1, keepdim=True)
        assert torch.allclose(bank[rows], expected, atol=1e-6)
        assert torch.allclose(bank[rows].norm(dim=1), torch.ones(len(rows)), atol=1e-6)
        assert not torch.allclose(bank[rows], before[rows], atol=1e-3)
        others = torch.ones(N, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(bank[others], before[others])


def test_eval_mode_changes_neither_banks_nor_z() -> None:
    view = make_view()
    term = built(view).eval()
    snapshot = {k: v.clone() for k, v in term.state_dict().items()}
    loss = term(view)
    assert torch.isfinite(loss)
    for key, value in term.state_dict().items():
        assert torch.equal(value, snapshot[key]) or (key == "log_z" and torch.isnan(value).all()), key


def test_z_is_estimated_on_the_first_training_step_then_held_fixed() -> None:
    view = make_view()
    term = built(view, num_negatives=5).train()
    fixed = torch.tensor([[1, 2, 3, 4, 5]] * 4)
    term.sample_negatives = lambda batch, device: fixed
    v_s, v_t = (v.detach() for v in term.embed(view))
    expected = []
    for v, bank in ((v_s, term.memory_t), (v_t, term.memory_s)):
        rows = torch.cat([view.index[:, None], fixed], dim=1)  # the positive, then the K negatives
        scores = torch.exp((bank[rows] * v[:, None, :]).sum(-1) / 0.07)
        expected.append(math.log(scores.mean().item() * N))  # the reference: Z = mean(out) * N
    term(view)
    assert torch.allclose(term.log_z, torch.tensor(expected), atol=1e-5)
    first = term.log_z.clone()
    term(make_view(seed=1, index=torch.tensor([0, 1, 2, 3])))
    assert torch.equal(term.log_z, first)


def _update_on_rank(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        term = built().train()  # same seed on both ranks: the same banks, as after DDP's first broadcast
        before = term.memory_s.clone()
        index = torch.tensor([[0, 1], [10, 11]][rank])
        term(make_view(batch=2, index=index, seed=rank))
        gathered = [torch.empty_like(term.memory_s) for _ in range(2)]
        dist.all_gather(gathered, term.memory_s)
        assert torch.equal(gathered[0], gathered[1])  # every rank holds every rank's update
        moved = ((term.memory_s - before).norm(dim=1) > 1e-6).nonzero().flatten().tolist()
        assert moved == [0, 1, 10, 11], moved
    finally:
        dist.destroy_process_group()


def test_bank_updates_of_all_ranks_reach_every_rank(tmp_path: Path) -> None:
    mp.start_processes(_update_on_rank, args=(str(tmp_path / "store"),), nprocs=2, start_method="fork")


def test_a_loaded_z_replaces_the_one_in_use() -> None:
    view = make_view()
    term = built(view).train()
    term(view)
    state = {k: v.clone() for k, v in term.state_dict().items()}
    state["log_z"] = torch.tensor([5.0, 6.0])
    term.load_state_dict(state)
    term(view)
    assert torch.equal(term.log_z, torch.tensor([5.0, 6.0]))  # held fixed at the loaded value
    state["log_z"] = torch.full((2,), float("nan"))  # a checkpoint from before the first step
    term.load_state_dict(state)
    assert torch.isfinite(term(view))
    assert torch.isfinite(term.log_z).all()  # estimated again


# -- the loss -------------------------------------------------------------------------------


def test_nce_loss_matches_a_hand_computation() -> None:
    # Two samples, K = 2 negatives each, N = 10 samples: K * Pn = 0.2.
    p_pos = [0.5, 0.05]
    p_neg = [[0.1, 0.3], [0.02, 0.4]]
    by_hand = (
        -(
            math.log(0.5 / 0.7)
            + math.log(0.2 / 0.3)
            + math.log(0.2 / 0.5)
            + math.log(0.05 / 0.25)
            + math.log(0.2 / 0.22)
            + math.log(0.2 / 0.6)
        )
        / 2
    )
    value = nce_loss(torch.tensor(p_pos).log(), torch.tensor(p_neg).log(), num_samples=10)
    assert value.item() == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(2.2308, abs=1e-4)  # (0.3365 + 0.4055 + 0.9163 + 1.6094 + 0.0953 + 1.0986) / 2


def test_nce_loss_is_stable_where_exp_of_the_scores_overflows() -> None:
    pos, neg = torch.tensor([200.0, -200.0]), torch.tensor([[-300.0, 150.0], [0.0, 90.0]])
    value = nce_loss(pos, neg, num_samples=100)
    assert torch.isfinite(value)
    # log(P / (P + KPn)) -> 0 for large P, -> log P - log KPn for small P; log(KPn / (P + KPn)) likewise.
    k_pn = math.log(2 / 100)
    by_hand = -(0 + (-200 - k_pn) + 0 + (k_pn - 150) + (k_pn - math.log(1 + 2 / 100)) + (k_pn - 90)) / 2
    assert value.item() == pytest.approx(by_hand, rel=1e-5)


def score(v: list[float], m: list[float], temperature: float, z: float) -> float:
    """exp(<v, m> / T) / Z, in plain Python."""
    return math.exp(sum(a * b for a, b in zip(v, m, strict=True)) / temperature) / z


@pytest.mark.parametrize("share", [True, False])
def test_term_value_with_fixed_z_and_fixed_negatives_matches_a_hand_computation(share: bool) -> None:
    view = make_view()
    term = built(view, num_negatives=3, share_negatives=share, nce_temperature=0.5).eval()
    term.log_z.copy_(torch.tensor([math.log(7.0), math.log(3.0)]))
    negatives = torch.tensor([4, 0, 42]) if share else torch.tensor([[4, 0, 42], [1, 1, 2], [9, 3, 8], [5, 6, 7]])
    term.sample_negatives = lambda batch, device: negatives
    v_s, v_t = (v.detach().tolist() for v in term.embed(view))
    total = 0.0
    for v, bank, z in ((v_s, term.memory_t.tolist(), 7.0), (v_t, term.memory_s.tolist(), 3.0)):
        k_pn = 3 / N
        for b, i in enumerate(view.index.tolist()):
            p_pos = score(v[b], bank[i], 0.5, z)
            total -= math.log(p_pos / (p_pos + k_pn)) / 4
            for j in negatives.tolist() if share else negatives[b].tolist():
                total -= math.log(k_pn / (score(v[b], bank[j], 0.5, z) + k_pn)) / 4
    assert term(view).item() == pytest.approx(total, rel=1e-5)


def test_sampled_negatives_are_uniform_rows_of_the_bank() -> None:
    term = built(num_negatives=40)
    shared = term.sample_negatives(4, torch.device("cpu"))
    assert shared.shape == (40,) and shared.min() >= 0 and shared.max() < N
    term.share_negatives = False
    draws = term.sample_negatives(500, torch.device("cpu"))
    assert draws.shape == (500, 40)
    counts = torch.bincount(draws.flatten(), minlength=N).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()  # 400 expected per row


def test_loss_is_finite_and_positive_and_gradients_reach_features_and_heads() -> None:
    view = make_view()
    term = built(view).train()
    loss = term(view)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    s = view.student_features["s"]
    assert s.grad is not None and s.grad.abs().sum() > 0
    for head in (term.embed_s, term.embed_t):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
        assert head.bias.grad is not None
    assert not term.memory_s.requires_grad and not term.memory_t.requires_grad


# -- errors ---------------------------------------------------------------------------------

NEEDS_INDEX = r"CRD needs sample indices from the data module: its batches must carry 'index' and the training-set size"


def test_missing_index_or_training_set_size_is_refused() -> None:
    term = CRDLoss("s", "t", num_negatives=5)
    with pytest.raises(DistillError, match=NEEDS_INDEX):
        term.build(make_view(num_samples=None))
    view = make_view()
    with pytest.raises(DistillError, match=NEEDS_INDEX):
        term.build(StepView(**{**view.__dict__, "index": None}))
    term = built(view)
    with pytest.raises(DistillError, match=NEEDS_INDEX):  # a batch without 'index' at training time
        term(StepView(**{**view.__dict__, "index": None}))


def test_as_many_negatives_as_samples_is_refused() -> None:
    with pytest.raises(
        DistillError, match=r"num_negatives \(50\) must be smaller than the number of training samples \(50\)"
    ):
        CRDLoss("s", "t", num_negatives=50).build(make_view())
    CRDLoss("s", "t", num_negatives=49).build(make_view())  # one fewer is fine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 0}, "embed_dim must be an integer >= 1, got 0"),
        ({"num_negatives": -3}, "num_negatives must be an integer >= 1, got -3"),
        ({"nce_temperature": 0.0}, "nce_temperature must be a positive number, got 0.0"),
        ({"nce_temperature": float("nan")}, "nce_temperature must be a positive number, got nan"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be a number in \[0, 1\), got -0.1"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(DistillError, match="CRD: " + message):
        CRDLoss("s", "t", **kwargs)


# -- config ---------------------------------------------------------------------------------


def test_config_composes_instantiates_and_its_layers_fit_the_default_pair(tmp_path: Path) -> None:
    cfg = compose_config(["distill=[hard,kd,crd]", f"paths.output_dir={tmp_path}"])
    assert list(cfg.distill) == ["hard", "kd", "crd"]
    terms = {name: hydra.utils.instantiate(node) for name, node in cfg.distill.items()}
    crd = terms["crd"]
    assert isinstance(crd, CRDLoss)
    assert (crd.weight, crd.embed_dim, crd.num_negatives) == (0.8, 128, 4096)
    assert (crd.nce_temperature, crd.momentum) == (0.07, 0.5)
    num_samples = cfg.data.num_train + cfg.data.num_transfer
    DistillationModule(
        hydra.utils.instantiate(cfg.student.net),
        {"cnn": hydra.utils.instantiate(cfg.teacher.cnn.net)},
        terms,
        ADAM,
        num_classes=10,
        example_input=torch.randn(2, 40),
        num_samples=num_samples,
    )
    assert crd.embed_s.in_features == 100 and crd.embed_t.in_features == 1280
    assert crd.memory_s.shape == (54000, 128) == crd.memory_t.shape


# -- in the distillation module -------------------------------------------------------------


def random_data(n: int = 256) -> TensorBatches:
    g = torch.Generator().manual_seed(0)
    return TensorBatches(torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g), 64, shuffle=True)


def crd_module(num_samples: int | None, **kwargs) -> DistillationModule:
    torch.manual_seed(0)
    terms = {"kd": KDLoss(0.9, temperature=4.0), "crd": CRDLoss("features", "head.0", num_negatives=32, **kwargs)}
    return DistillationModule(
        MLP((40,), 10, hidden=(32,)),
        {"cnn": ConvNet1d((40,), 10, channels=(8, 8))},
        terms,
        ADAM,
        num_classes=10,
        example_input=torch.randn(2, 40),
        num_samples=num_samples,
    )


@pytest.mark.parametrize("share", [True, False])
def test_distillation_module_trains_crd_and_fills_the_banks(share: bool) -> None:
    data = random_data()
    num_samples = len(data.x)  # not len(data): a TensorBatches' length is its number of batches
    module = crd_module(num_samples, share_negatives=share)
    crd = module.terms["crd"]
    assert crd.embed_s.in_features == 32 and crd.embed_t.in_features == 8 * 20  # [B, 32] and [B, 8, 20] flattened
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in crd.parameters()} <= optimised
    banks = crd.memory_s.clone(), crd.memory_t.clone()
    heads = crd.embed_s.weight.clone(), crd.embed_t.weight.clone()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, data)
    value = trainer.callback_metrics["student/train/crd"]
    assert torch.isfinite(value) and value > 0
    for before, after in zip(banks, (crd.memory_s, crd.memory_t), strict=True):
        moved = (after - before).norm(dim=1) > 1e-6
        assert moved.all()  # every sample was seen, so every row moved
        assert torch.allclose(after.norm(dim=1), torch.ones(num_samples), atol=1e-5)
    assert not torch.equal(heads[0], crd.embed_s.weight) and not torch.equal(heads[1], crd.embed_t.weight)
    assert torch.isfinite(crd.log_z).all()
    state = module.state_dict()  # what a Lightning checkpoint saves
    assert torch.equal(state["terms.crd.memory_s"], crd.memory_s) and "terms.crd.log_z" in state
    restored = crd_module(num_samples, share_negatives=share)
    restored.load_state_dict(state)
    assert torch.equal(restored.terms["crd"].memory_t, crd.memory_t)
    assert torch.equal(restored.terms["crd"].log_z, crd.log_z)


def test_distillation_module_without_num_samples_is_refused() -> None:
    with pytest.raises(DistillError, match=NEEDS_INDEX):
        crd_module(None)
