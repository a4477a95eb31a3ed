"""The LM teacher's next-token distributions computed once: the top-k form and what it does to each loss, the
disk cache (key, reuse, lock, unreadable entries), and the module and the job using it."""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
from pathlib import Path

import pytest
import torch
from tests.test_llm_pipeline import TINY, tiny_lm_job

from distill.errors import DistillError
from distill.llm import losses as L
from distill.llm.models import causal_lm
from distill.llm.module import HiddenStateLoss, LMDistillationModule
from distill.llm.teacher_cache import (
    TAIL_FLOOR,
    TeacherOutputCache,
    dense_log_probs,
    log_tail,
    sequences_digest,
    top_k_log_probs,
    weights_digest,
)
from distill.losses.base import StepView

V = 256


def peaked_logits(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Logits with a language model's shape of distribution: a few likely tokens and a long Zipf-like tail."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, V + 1, dtype=torch.float32)
    base = -1.1 * ranks.log()  # Zipf: p(rank r) ∝ r^-1.1
    noise = 0.5 * torch.randn(*shape, V, generator=g)
    perm = torch.stack([torch.randperm(V, generator=g) for _ in range(math.prod(shape))]).reshape(*shape, V)
    return (base + noise).gather(-1, perm)  # each position ranks the tokens differently


def test_the_whole_vocabulary_gives_the_distribution_exactly() -> None:
    logits = peaked_logits((3, 5))
    values, ids, rest = top_k_log_probs(logits, None)
    assert values.shape == (3, 5, V) and ids.dtype == torch.int32 and bool(torch.isinf(rest).all())
    dense = dense_log_probs(values, ids, rest, V)
    torch.testing.assert_close(dense, torch.log_softmax(logits, -1), rtol=0, atol=1e-6)


def test_top_k_keeps_the_largest_probabilities_and_spreads_the_rest_evenly() -> None:
    logits = peaked_logits((4, 6), seed=1)
    log_p = torch.log_softmax(logits, -1)
    k = 10
    values, ids, rest = top_k_log_probs(logits, k)
    assert values.shape == ids.shape == (4, 6, k) and rest.shape == (4, 6)
    assert bool((values[..., :-1] >= values[..., 1:]).all())  # in decreasing order
    torch.testing.assert_close(values, log_p.topk(k, -1).values)
    # the rest's mass is what the top k leave, computed in log space
    torch.testing.assert_close(rest.exp() + values.exp().sum(-1), torch.ones(4, 6), rtol=0, atol=1e-6)
    dense = dense_log_probs(values, ids, rest, V)
    torch.testing.assert_close(dense.exp().sum(-1), torch.ones(4, 6), rtol=0, atol=1e-5)
    torch.testing.assert_close(dense.gather(-1, ids.long()), log_p.gather(-1, ids.long()))
    others = torch.ones_like(dense, dtype=torch.bool).scatter(-1, ids.long(), False)
    tail = dense[others].reshape(4, 6, V - k)
    torch.testing.assert_close(tail, (rest - math.log(V - k)).unsqueeze(-1).expand_as(tail))


LOSSES = {
    "forward_kl": L.forward_kl,
    "reverse_kl": L.reverse_kl,
    "jsd": functools.partial(L.generalized_jsd, beta=0.5),
    "skew_forward_kl": functools.partial(L.skew_forward_kl, alpha=0.1),
    "skew_reverse_kl": functools.partial(L.skew_reverse_kl, alpha=0.1),
    "tv": L.total_variation,
}


def loss_errors(k: int | None, temperature: float = 1.0) -> dict[str, float]:
    """Each loss on the kept distributions against the loss on the full ones, relative, on 64 positions."""
    teacher, student = peaked_logits((8, 8), seed=2), peaked_logits((8, 8), seed=3)
    labels = torch.zeros(8, 8, dtype=torch.long)
    approx = dense_log_probs(*top_k_log_probs(teacher, k), V)
    return {
        name: abs(
            float(
                f(student, approx, labels, temperature=temperature)
                / f(student, teacher, labels, temperature=temperature)
            )
            - 1
        )
        for name, f in LOSSES.items()
    }


def test_each_loss_is_exact_with_the_whole_vocabulary() -> None:
    for temperature in (1.0, 2.0):
        assert max(loss_errors(None, temperature).values()) < 1e-5


def test_each_losss_error_shrinks_as_more_tokens_are_kept() -> None:
    """Measured: the relative error of every loss at k = 8, 32, 128 of 256 tokens (Zipf-shaped teachers)."""
    errors = {k: loss_errors(k) for k in (8, 32, 128)}
    for name in LOSSES:
        assert errors[128][name] < errors[32][name] < errors[8][name], name
        assert errors[128][name] < 0.05, (name, errors[128][name])
    # the KLs that read the teacher's tail through its mean are within a few percent already at k = 32
    assert errors[32]["forward_kl"] < 0.05 and errors[32]["skew_forward_kl"] < 0.05


def test_with_the_tail_shaped_after_the_student_each_loss_is_its_value_on_k_tokens_and_one_bucket() -> None:
    """`dense_log_probs(..., student_logits)`: every loss (each an f-divergence) is exactly the divergence between the
    two distributions coarsened to the kept tokens and one bucket holding the rest (computed here with the loss
    functions themselves on k + 1 "logits"); the student's own tail keeps its shape."""
    teacher, student = peaked_logits((5, 7), seed=6), peaked_logits((5, 7), seed=7)
    labels = torch.zeros(5, 7, dtype=torch.long)
    for k in (4, 32):
        values, ids, rest = top_k_log_probs(teacher, k)
        approx = dense_log_probs(values, ids, rest, V, student_logits=student)
        torch.testing.assert_close(approx.exp().sum(-1), torch.ones(5, 7), rtol=0, atol=1e-5)
        log_q = torch.log_softmax(student, -1)
        tail = torch.ones_like(log_q, dtype=torch.bool).scatter(-1, ids.long(), False)
        coarse_p = torch.cat([values, rest.unsqueeze(-1)], -1)
        coarse_q = torch.cat(
            [log_q.gather(-1, ids.long()), log_q.masked_fill(~tail, -math.inf).logsumexp(-1, True)], -1
        )
        coarse_labels = torch.zeros(5, 7, dtype=torch.long)
        for name, f in LOSSES.items():
            got = float(f(student, approx, labels))
            want = float(f(coarse_q, coarse_p, coarse_labels))
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (name, k)
    # with the whole vocabulary kept there is no bucket: the distribution itself
    exact = dense_log_probs(*top_k_log_probs(teacher, None), V, student_logits=student)
    torch.testing.assert_close(exact, torch.log_softmax(teacher, -1), rtol=0, atol=1e-6)


TERMS = {
    "forward_kl": lambda t: L.ForwardKL(temperature=t),
    "reverse_kl": lambda t: L.ReverseKL(temperature=t),
    "jsd": lambda t: L.GeneralizedJSD(temperature=t, beta=0.3),
    "skew_forward_kl": lambda t: L.SkewForwardKL(temperature=t, alpha=0.2),
    "skew_reverse_kl": lambda t: L.SkewReverseKL(temperature=t, alpha=0.2),
    "tv": lambda t: L.TotalVariation(temperature=t),
}


def view_of(student: torch.Tensor, labels: torch.Tensor, **kwargs) -> StepView:
    return StepView(
        student_logits=student, teacher_logits=kwargs.pop("teacher_logits", None), teachers_logits={},
        student_features={}, teacher_features={}, targets=labels, index=None, epoch=0, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_the_kept_tokens_alone_give_every_term_its_dense_value_and_gradient(temperature: float) -> None:
    """A term given `view.teacher_top_k` (k + 1 entries, `coarse_log_probs`) computes exactly what it computes on
    the dense distribution with the tail spread as the student's (`dense_log_probs(..., student_logits)`), value and
    gradient, at any temperature; labels of -100 are skipped the same way."""
    teacher = peaked_logits((4, 6), seed=8)
    labels = torch.zeros(4, 6, dtype=torch.long)
    labels[0, :3] = L.IGNORE_INDEX
    for k in (8, 64):
        kept = top_k_log_probs(teacher, k)
        for name, make in TERMS.items():
            term = make(temperature)
            grads, values = [], []
            for sparse in (False, True):
                student = peaked_logits((4, 6), seed=9).requires_grad_(True)
                if sparse:
                    view = view_of(student, labels, teacher_top_k=kept)
                else:
                    view = view_of(student, labels, teacher_logits=dense_log_probs(*kept, V, student_logits=student))
                value = term(view)
                value.backward()
                values.append(float(value))
                grads.append(student.grad)
            assert values[1] == pytest.approx(values[0], rel=2e-4, abs=1e-6), (name, k)
            torch.testing.assert_close(grads[1], grads[0], rtol=2e-3, atol=2e-6, msg=f"{name}, k={k}")


def test_the_tail_mass_from_the_kept_tokens_alone() -> None:
    log_p = torch.log_softmax(peaked_logits((3, 4), seed=10), -1)
    kept = log_p.topk(20, -1).values
    want = log_p.topk(V, -1).values[..., 20:].logsumexp(-1, keepdim=True)
    torch.testing.assert_close(log_tail(kept, V), want, rtol=0, atol=1e-5)
    assert bool(torch.isinf(log_tail(log_p, V)).all())  # every token kept: no tail
    nearly_all = torch.log_softmax(torch.tensor([[30.0, 30.0, -30.0]]), -1)[:, :2]
    assert float(log_tail(nearly_all, 3)) == pytest.approx(math.log(TAIL_FLOOR), abs=1e-3)  # floored, finite


def test_a_term_that_reads_dense_logits_only_is_refused_the_kept_tokens() -> None:
    class Dense(L.TokenDivergence):
        def divergence(self, s, t, labels, temperature=None):
            return (s - t).pow(2).mean()

    student, labels = peaked_logits((2, 3)), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(DistillError, match="reads the teacher's dense logits only"):
        Dense()(view_of(student, labels, teacher_top_k=top_k_log_probs(peaked_logits((2, 3), seed=1), 4)))


def test_total_variation_moves_by_at_most_the_rest_mass() -> None:
    teacher, student = peaked_logits((6, 6), seed=4), peaked_logits((6, 6), seed=5)
    labels = torch.zeros(6, 6, dtype=torch.long)
    for k in (4, 16, 64):
        values, ids, rest = top_k_log_probs(teacher, k)
        approx = dense_log_probs(values, ids, rest, V)
        change = abs(float(L.total_variation(student, approx, labels) - L.total_variation(student, teacher, labels)))
        assert change <= float(rest.exp().mean()) + 1e-6


# -- the disk cache -------------------------------------------------------------------------------------------


def tiny_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return causal_lm(vocab_size=V, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY).eval()


def sequences(n: int = 10, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Counted:
    """`teacher` as the cache calls it (inputs -> logits), counting the sequences it was run on."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher, self.rows = teacher, 0

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.rows += len(inputs["input_ids"])
        return self.teacher(**inputs, use_cache=False).logits


def test_computed_once_then_reused_and_keyed_by_teacher_sequences_and_k(tmp_path: Path) -> None:
    teacher, seqs, rows = tiny_teacher(), sequences(), torch.arange(10) * 3  # rows of a split subset
    cache = TeacherOutputCache(tmp_path, top_k=16)
    first = Counted(teacher)
    got, path, reused = cache.load_or_compute("t", teacher, seqs, rows, first, 4, "32-true")
    assert not reused and path.exists() and first.rows == 1 + 10  # one probe row, then every sequence once
    again = Counted(teacher)
    got2, path2, reused2 = cache.load_or_compute("t", teacher, seqs, rows, again, 4, "32-true")
    assert reused2 and path2 == path and again.rows == 1  # the probe only
    assert torch.equal(got.values, got2.values) and torch.equal(got.ids, got2.ids)
    # what a batch sees: its rows, by split row, exactly the teacher's kept distributions
    batch = torch.tensor([27, 0, 9])
    with torch.no_grad():
        logits = teacher(**{k: v[[9, 0, 3]] for k, v in seqs.items()}, use_cache=False).logits[:, :-1]
    want = dense_log_probs(*top_k_log_probs(logits, 16), V)
    torch.testing.assert_close(got2.log_probs(batch, torch.device("cpu")), want, rtol=0, atol=1e-5)
    with pytest.raises(DistillError, match="do not cover"):
        got2.log_probs(torch.tensor([1]), torch.device("cpu"))
    payload = json.loads(path.with_suffix(".json").read_text())
    assert payload["top_k"] == 16 and payload["teacher"] == weights_digest(teacher)
    # another teacher, other sequences, another k, another precision: other entries
    keys = {path.name}
    for other in (
        dict(teacher=tiny_teacher(1)),
        dict(sequences=sequences(seed=1)),
        dict(top_k=32),
        dict(precision="bf16-mixed"),
    ):
        c = TeacherOutputCache(tmp_path, top_k=other.get("top_k", 16))
        t = other.get("teacher", teacher)
        _, p, r = c.load_or_compute(
            "t", t, other.get("sequences", seqs), rows, Counted(t), 4, other.get("precision", "32-true")
        )
        assert not r
        keys.add(p.name)
    assert len(keys) == 5


def test_one_changed_weight_or_token_changes_the_key() -> None:
    teacher, seqs = tiny_teacher(), sequences()
    before = weights_digest(teacher), sequences_digest(seqs)
    with torch.no_grad():
        next(teacher.parameters()).view(-1)[0] += 1e-3
    seqs["input_ids"][3, 4] = (seqs["input_ids"][3, 4] + 1) % V
    assert weights_digest(teacher) != before[0] and sequences_digest(seqs) != before[1]


def test_an_unreadable_entry_is_moved_aside_and_computed_again(tmp_path: Path) -> None:
    teacher, seqs = tiny_teacher(), sequences()
    cache = TeacherOutputCache(tmp_path, top_k=8)
    _, path, _ = cache.load_or_compute("t", teacher, seqs, torch.arange(10), Counted(teacher), 5, "32-true")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    counted = Counted(teacher)
    got, path2, reused = cache.load_or_compute("t", teacher, seqs, torch.arange(10), counted, 5, "32-true")
    assert not reused and path2 == path and counted.rows == 11 and got.values.shape == (10, 11, 8)
    assert len(list(tmp_path.glob(f"{path.name}.unreadable-*"))) == 1


def _compute_in_process(folder: str, out: str) -> None:
    teacher = tiny_teacher()
    counted = Counted(teacher)
    _, _, reused = TeacherOutputCache(Path(folder), top_k=8).load_or_compute(
        "t", teacher, sequences(n=64), torch.arange(64), counted, 4, "32-true"
    )
    Path(out).write_text(json.dumps({"reused": reused, "rows": counted.rows}))


def test_concurrent_jobs_compute_the_outputs_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    jobs = [
        ctx.Process(target=_compute_in_process, args=(str(tmp_path), str(tmp_path / f"{i}.json"))) for i in range(2)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    results = sorted((json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)), key=lambda r: r["reused"])
    assert results == [{"reused": False, "rows": 65}, {"reused": True, "rows": 1}]


def test_bad_top_k_is_refused(tmp_path: Path) -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DistillError, match="teacher_top_k must be a whole number"):
            TeacherOutputCache(tmp_path, top_k=bad)


# -- the module -----------------------------------------------------------------------------------------------


def lm_module(teacher: torch.nn.Module, cache: TeacherOutputCache | None, **kwargs) -> LMDistillationModule:
    torch.manual_seed(0)
    student = causal_lm(vocab_size=V, hidden_size=8, num_hidden_layers=1, intermediate_size=16, **TINY)
    terms = kwargs.pop("terms", None) or {"kl": L.ForwardKL(0.5)}
    return LMDistillationModule(
        student, {"t": teacher}, terms, functools.partial(torch.optim.AdamW, lr=1e-2), teacher_cache=cache, **kwargs
    )


def fit(module: LMDistillationModule, epochs: int = 2) -> None:
    import lightning

    from distill.llm.data.batches import SequenceBatches

    seqs = sequences(n=24)
    loader = SequenceBatches({**seqs, "labels": seqs["input_ids"].clone()}, 8, shuffle=True)
    lightning.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    ).fit(module, loader)  # fmt: skip


def teacher_calls(teacher: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, a, k, out: calls.append(1), with_kwargs=True)
    return calls


def test_with_the_whole_vocabulary_cached_training_matches_running_the_teacher(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    plain = lm_module(teacher, None)
    fit(plain)
    calls = teacher_calls(teacher)
    cached = lm_module(teacher, TeacherOutputCache(tmp_path, top_k=None))
    fit(cached)
    # the teacher ran once for the probe and once per batch of 8 of the 24 sequences, then never in training
    assert len(calls) == 1 + 3
    assert cached.teacher_cache_entries["t"]["top_k"] == V and not cached.teacher_cache_entries["t"]["reused"]
    for a, b in zip(plain.student.parameters(), cached.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    calls.clear()
    fit(lm_module(teacher, TeacherOutputCache(tmp_path, top_k=None)))
    assert len(calls) == 1  # a second run reads the entry: the probe only


def test_the_kept_tokens_alone_train_the_student_as_the_dense_distribution_does(tmp_path: Path) -> None:
    """With the tail spread as the student's, the terms read the kept tokens alone (no [B, L, V] teacher tensor);
    the student trains as with the dense distribution. A term that cannot read them gets the dense one."""
    teacher = tiny_teacher()
    cache = TeacherOutputCache(tmp_path, top_k=16, tail="student")
    sparse, dense = lm_module(teacher, cache), lm_module(teacher, cache)
    assert sparse._sparse
    dense._sparse = False
    for module in (sparse, dense):
        fit(module)
    for a, b in zip(sparse.student.parameters(), dense.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)

    class Dense(L.TokenDivergence):
        def divergence(self, s, t, labels, temperature=None):
            return L.forward_kl(s, t, labels)

    assert not lm_module(teacher, cache, terms={"d": Dense()})._sparse
    assert not lm_module(teacher, TeacherOutputCache(tmp_path, top_k=16, tail="even"))._sparse


def test_generated_batches_and_hidden_states_still_run_the_teacher(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    calls = teacher_calls(teacher)
    module = lm_module(teacher, TeacherOutputCache(tmp_path, top_k=8), sequence_kd_fraction=0.5)
    fit(module, epochs=2)
    generated = module.generated_batches["sequence_kd"]
    assert 0 < generated < 6
    # the teacher generates each sequence-KD batch (a call per new token) and then scores it; data batches: none
    assert len(calls) > 1 + 3 + generated
    calls.clear()
    hidden = lm_module(
        teacher, TeacherOutputCache(tmp_path / "h", top_k=8),
        terms={"kl": L.ForwardKL(0.5), "hidden": HiddenStateLoss([[1, 1]])},
    )  # fmt: skip
    fit(hidden, epochs=1)
    assert hidden.teacher_cache_entries == {} and not (tmp_path / "h").exists()
    assert len(calls) == 3  # every training step


@pytest.mark.slow
def test_the_job_reuses_the_outputs_across_runs_and_reports_them(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from distill.cli import CONFIG_DIR
    from distill.spine import run

    reports = []
    for i, extra in enumerate([[], [], ["teacher_top_k=8"]]):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("lm", overrides=[a.replace("/run", f"/run{i}") for a in tiny_lm_job(tmp_path, *extra)])
        run(cfg)
        reports.append(json.loads((tmp_path / f"run{i}" / "report.json").read_text()))
    entries = [r["teacher_outputs"]["tiny_llama"] for r in reports]
    assert [e["reused"] for e in entries] == [False, True, False]
    assert entries[0]["file"] == entries[1]["file"] != entries[2]["file"]
    assert [e["top_k"] for e in entries] == [256, 256, 8]
    ppl = [{m["model"]: m["perplexity"] for m in r["models"]} for r in reports]
    assert ppl[0] == ppl[1]  # the same student, from the computed and from the reused entry
    assert ppl[2]["student"] != ppl[0]["student"]


def test_a_fast_dev_run_does_not_compute_the_outputs(tmp_path: Path) -> None:
    import lightning

    from distill.llm.data.batches import SequenceBatches

    teacher = tiny_teacher()
    calls = teacher_calls(teacher)
    module = lm_module(teacher, TeacherOutputCache(tmp_path / "c", top_k=8))
    seqs = sequences(n=24)
    loader = SequenceBatches({**seqs, "labels": seqs["input_ids"].clone()}, 8, shuffle=True)
    lightning.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False).fit(module, loader)
    assert module.teacher_cache_entries == {} and not (tmp_path / "c").exists()
    assert len(calls) == 1  # the one training batch ran the teacher


def test_the_lm_loss_from_log_probabilities_the_step_computed_once() -> None:
    logits = peaked_logits((3, 5), seed=11)
    labels = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(0))
    labels[1, 2:] = L.IGNORE_INDEX
    want = L.lm_loss(logits, labels)
    got = L.lm_loss(torch.log_softmax(logits, -1), labels, log_probs=True)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
