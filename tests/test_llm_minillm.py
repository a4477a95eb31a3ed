"""MiniLLM (distill.llm.minillm): its loss against hand arithmetic (single-step term, long-term rewards,
importance weights, PPO clip), the direction of its gradient on toy pairs, teacher-mixed sampling, the
sampling loop's caches, and training through LMDistillationModule and distill-lm."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.builders import kl_by_hand, quiet_trainer
from tests.builders import softmax_by_hand as softmax
from tests.conftest import compose_config
from torch import nn

pytest.importorskip("transformers")

from distill.assembly import build_terms  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.llm.losses import IGNORE_INDEX, ForwardKL  # noqa: E402
from distill.llm.minillm import (  # noqa: E402
    MiniLLM,
    importance_log_weights,
    long_term_rewards,
    minillm_loss,
    sample_mixed,
)
from distill.llm.models import causal_lm  # noqa: E402
from distill.llm.module import LMDistillationModule  # noqa: E402

TINY = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
X = IGNORE_INDEX


class TableLM(nn.Module):
    """A causal LM whose next-token logits are one table whatever the context: distributions set by hand."""

    def __init__(self, logits: list[float], trainable: bool = True) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(logits), requires_grad=trainable)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, cache=None, **kwargs):
        return SimpleNamespace(logits=self.table.expand(*input_ids.shape, -1), cache=None)


def module_of(student: nn.Module, teacher: nn.Module, term: MiniLLM, **kwargs) -> LMDistillationModule:
    return LMDistillationModule(student, {"t": teacher}, {"minillm": term},
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)  # fmt: skip


def plain_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def reverse_kl_of_tables(student: TableLM, teacher: TableLM) -> float:
    q, p = torch.log_softmax(student.table.detach(), -1), torch.log_softmax(teacher.table.detach(), -1)
    return float((q.exp() * (q - p)).sum())


# -- (a) the gradient moves the student towards the teacher -------------------------------------


@pytest.mark.parametrize("single_step", [True, False])
def test_gradient_steps_lower_the_reverse_kl_of_a_toy_pair(single_step: bool) -> None:
    torch.manual_seed(0)
    student, teacher = TableLM([3.0, 0.0, 0.0, -1.0]), TableLM([-1.0, 0.0, 1.0, 2.0], trainable=False)
    term = MiniLLM(single_step=single_step)  # the paper's settings: alpha 0.2, clip 0.2, length norm, whitening
    module = module_of(student, teacher, term, prompt_len=2)
    batch = plain_batch(16, 8, 4)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = reverse_kl_of_tables(student, teacher)
    for _ in range(30):
        loss, parts = term.sequence_loss(module, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert parts["length"] == 6  # no end-of-text token: every response fills its row (8 - 2 prompt tokens)
    after = reverse_kl_of_tables(student, teacher)
    assert before > 2.5 and after < before / 4


def test_the_policy_gradient_raises_a_response_the_teacher_likes_and_lowers_one_it_does_not() -> None:
    # Two responses (tokens 1 then 0) after a prompt; the student is uniform over 3 tokens everywhere. The
    # teacher agrees with the student on the first step (single-step term 0 there) and on the second likes
    # token 0 more (row 0) or less (row 1) than the student: the long-term reward of the first step.
    student = torch.zeros(2, 3, 3, requires_grad=True)
    teacher = torch.zeros(2, 3, 3)
    teacher[0, 2] = torch.tensor([4.0, 0.0, 0.0])
    teacher[1, 2] = torch.tensor([-4.0, 0.0, 0.0])
    labels = torch.tensor([[X, 1, 0], [X, 1, 0]])
    loss, parts = minillm_loss(student, teacher, labels, alpha=0.0, clip_range=None, whiten_advantages=False)
    loss.backward()
    third = math.log(1 / 3)
    rewards = [math.log(softmax(teacher[b, 2].tolist())[0]) - third for b in range(2)]
    assert rewards[0] > 0 > rewards[1]
    for b in range(2):  # d pg / d s[b, 1, v] = −A_b (1[v = 1] − 1/3) / 4 valid tokens, A_b = r of the second step
        expected = [-rewards[b] * ((v == 1) - 1 / 3) / 4 for v in range(3)]
        assert student.grad[b, 1].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(parts["pg"]) == pytest.approx(-(rewards[0] + rewards[1]) / 4, abs=1e-6)  # the last steps: no future
    stepped = torch.log_softmax(student.detach() - 1.0 * student.grad, -1)
    assert stepped[0, 1, 1] > third > stepped[1, 1, 1]  # the liked response is now likelier, the other less likely


# -- (b) the single-step term is the exact per-token reverse KL ---------------------------------

S = [[[0.0, 0.0, 0.0], [1.0, -0.5, 2.0], [0.3, 0.2, -1.0], [2.0, 1.0, 0.0]]]
T = [[[0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]]
Y = [[X, 2, 0, X]]  # position 0: the prompt; position 3: padding


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_single_step_term_is_the_weighted_exact_reverse_kl_by_hand(alpha: float) -> None:
    _, parts = minillm_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Y), alpha=alpha)
    expected = []
    for t in (1, 2):
        q, p = softmax(S[0][t]), softmax(T[0][t])
        y = Y[0][t]
        w = q[y] / (alpha * p[y] + (1 - alpha) * q[y])  # 1 when alpha = 0
        expected.append(w * kl_by_hand(q, p))
    assert float(parts["reg"]) == pytest.approx(sum(expected) / 2, rel=1e-5)
    if alpha == 0:
        assert float(parts["reg"]) == pytest.approx((kl_by_hand(softmax(S[0][1]), softmax(T[0][1]))
                                                     + kl_by_hand(softmax(S[0][2]), softmax(T[0][2]))) / 2, rel=1e-5)  # fmt: skip
    # the reward: the response's mean log p/q of its sampled tokens
    r = [math.log(softmax(T[0][t])[Y[0][t]]) - math.log(softmax(S[0][t])[Y[0][t]]) for t in (1, 2)]
    assert float(parts["reward"]) == pytest.approx(sum(r) / 2, rel=1e-5)
    assert float(parts["length"]) == 2
    # without the decomposition there is no single-step term
    _, plain = minillm_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Y), single_step=False)
    assert float(plain["reg"]) == 0


def test_temperature_divides_both_models_logits() -> None:
    _, parts = minillm_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Y), alpha=0.0, temperature=2.0)
    expected = [kl_by_hand(softmax(S[0][t], 2.0), softmax(T[0][t], 2.0)) for t in (1, 2)]
    assert float(parts["reg"]) == pytest.approx(sum(expected) / 2, rel=1e-5)


# -- (c) importance weights and teacher-mixed sampling ------------------------------------------


def test_importance_weights_by_hand_and_one_without_mixing() -> None:
    log_q, log_p = torch.log(torch.tensor([0.5, 0.1])), torch.log(torch.tensor([0.2, 0.6]))
    assert importance_log_weights(log_q, log_p, 0.0).tolist() == [0.0, 0.0]
    w = importance_log_weights(log_q, log_p, 0.3).exp().tolist()
    assert w == pytest.approx([0.5 / (0.3 * 0.2 + 0.7 * 0.5), 0.1 / (0.3 * 0.6 + 0.7 * 0.1)], rel=1e-6)
    assert importance_log_weights(log_q, log_p, 1.0).exp().tolist() == pytest.approx([2.5, 1 / 6], rel=1e-6)
    # alpha = 0, no clip, no whitening: every ratio is 1, so pg is minus the mean long-term reward
    _, parts = minillm_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Y), alpha=0.0, clip_range=None,
                            whiten_advantages=False)  # fmt: skip
    r2 = math.log(softmax(T[0][2])[0]) - math.log(softmax(S[0][2])[0])
    assert float(parts["pg"]) == pytest.approx(-(r2 + 0.0) / 2, rel=1e-5)


def test_ppo_clip_stops_the_gradient_of_an_overweighted_step_only_when_its_advantage_is_positive() -> None:
    # Sampled from 0.5 teacher + 0.5 student. Step 1: q = 0.6, p = 0.2, so w = 0.6 / 0.4 = 1.5, past 1 + 0.2.
    # Step 2: q = 0.2 and p = 0.9 (liked: R_1 > 0) or p = 0.1 (disliked: R_1 < 0). No single-step
    # decomposition here (no KL term), so only the policy gradient reaches the logits.
    student = torch.log(torch.tensor([[[0.5, 0.5], [0.6, 0.4], [0.8, 0.2]]])).requires_grad_()
    labels = torch.tensor([[X, 0, 1]])
    for p2 in (0.9, 0.1):
        teacher = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8], [1 - p2, p2]]]))
        student.grad = None
        loss, parts = minillm_loss(student, teacher, labels, alpha=0.5, clip_range=0.2, single_step=False,
                                   whiten_advantages=False)  # fmt: skip
        r1, r2 = math.log(0.2 / 0.6), math.log(p2 / 0.2)
        a1, a2 = (r1 + r2) / 2, r2  # R_t: the mean of this and the later rewards
        w2 = 0.2 / (0.5 * p2 + 0.5 * 0.2)
        pg_first = max(-a1 * 1.5, -a1 * 1.2)
        pg_last = max(-a2 * w2, -a2 * min(max(w2, 0.8), 1.2))
        assert float(parts["pg"]) == pytest.approx((pg_first + pg_last) / 2, rel=1e-5)
        loss.backward()
        if p2 == 0.9:
            assert a1 > 0 and student.grad[0, 1].abs().sum() == 0  # clipped: its weight is already past 1.2
        else:
            assert a1 < 0 and student.grad[0, 1].abs().sum() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_teacher_mixed_sampling_draws_from_the_mixture(alpha: float) -> None:
    torch.manual_seed(0)
    student, teacher = TableLM([math.log(0.9), math.log(0.1)]), TableLM([math.log(0.1), math.log(0.9)])
    rows, steps = 500, 40
    ids, mask = torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, 1, dtype=torch.long)
    tokens, lengths = sample_mixed(student, [teacher], ids, mask, torch.full((rows,), steps), alpha)
    assert tokens.shape == (rows, steps) and (lengths == steps).all()
    share = tokens.float().mean().item()  # how often token 1 was drawn
    assert share == pytest.approx(alpha * 0.9 + (1 - alpha) * 0.1, abs=0.01)  # 20000 draws: sd < 0.0035


def test_sampling_stops_at_the_end_of_text_token_and_each_rows_room() -> None:
    student, teacher = TableLM([0.0, 0.0, 0.0]), TableLM([0.0, 0.0, 0.0])
    torch.manual_seed(1)
    ids, mask = torch.tensor([[0, 1], [1, 1], [2, 2]]), torch.tensor([[0, 1], [1, 1], [1, 1]])
    tokens, lengths = sample_mixed(student, [teacher], ids, mask, torch.tensor([3, 0, 5]), 0.2, eos_token_id=2,
                                   pad_token_id=7)  # fmt: skip
    for row, room in enumerate((3, 0, 5)):
        n = int(lengths[row])
        got = tokens[row, :n].tolist()
        assert 0 <= n <= room and (tokens[row, n:] == 7).all()
        assert 2 not in got[:-1] and (n == room or got[-1] == 2)  # ends at its room or after its first eos
    assert lengths[1] == 0


def test_rollouts_keep_the_prompt_and_label_only_the_responses() -> None:
    # Both models put almost all mass on the end-of-text token (3): every response is that one token.
    student, teacher = TableLM([0.0, 0.0, 0.0, 30.0]), TableLM([0.0, 0.0, 0.0, 30.0], trainable=False)
    module = module_of(student, teacher, MiniLLM(), prompt_len=3, eos_token_id=3, pad_token_id=0)
    ids = torch.tensor([[1, 2, 1, 2, 1, 2], [2, 1, 2, 1, 0, 0]])
    labels = torch.tensor([[X, X, 1, 2, 1, 2], [X, 1, 2, 1, X, X]])  # prompts of 2 and 1 tokens
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]), "labels": labels}
    out = module.terms["minillm"].rollout(module, batch)
    assert out["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0]]
    assert out["labels"].tolist() == [[X, X, 3, X, X, X], [X, 3, X, X, X, X]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert student.training  # put back in train mode after sampling


def test_the_sampling_loops_cached_steps_match_a_full_forward_of_the_rollout() -> None:
    class Recorder(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model, self.seen = model, []

        def get_base_model(self) -> nn.Module:
            return self.model

        def forward(self, **kwargs):
            out = self.model(**kwargs)
            self.seen.append(out.logits[:, -1].detach())
            return out

    torch.manual_seed(0)
    student = Recorder(causal_lm(30, hidden_size=16, num_hidden_layers=2, intermediate_size=32, **TINY))
    teacher = Recorder(causal_lm(30, hidden_size=32, num_hidden_layers=2, intermediate_size=64, **TINY))
    module = module_of(student, teacher, MiniLLM(max_new_tokens=4), eos_token_id=29)
    ids = torch.randint(1, 29, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :2], labels[1, :5], labels[2, :3] = X, X, X  # prompts of 2, 5 and 3 tokens: left padding differs
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    out = module.terms["minillm"].rollout(module, batch)
    for recorder in (student, teacher):
        full = recorder.model(input_ids=out["input_ids"], attention_mask=out["attention_mask"]).logits.detach()
        for row, prompt in enumerate((2, 5, 3)):
            n = int((out["labels"][row] != X).sum())
            assert 1 <= n <= 4
            for step in range(n):
                torch.testing.assert_close(recorder.seen[step][row], full[row, prompt + step - 1], atol=1e-5, rtol=1e-5)


# -- (d) length normalisation -------------------------------------------------------------------


def test_long_term_reward_is_the_mean_of_the_future_rewards_by_hand() -> None:
    rewards = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 9.0], [5.0, -2.0, 6.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]).bool()  # prompt and padding rewards never count
    assert long_term_rewards(rewards, mask).tolist() == [
        [0.0, (2 + 3 + 4) / 3, (3 + 4) / 2, 4.0, 0.0, 0.0],
        [(-2 + 6) / 2, 6.0, 0.0, 0.0, 0.0, 0.0],
    ]
    assert long_term_rewards(rewards, mask, length_norm=False).tolist() == [
        [0.0, 9.0, 7.0, 4.0, 0.0, 0.0],
        [4.0, 6.0, 0.0, 0.0, 0.0, 0.0],
    ]
    with_current = long_term_rewards(rewards, mask, include_current=True)  # R_t, no single-step decomposition
    assert with_current.tolist() == [[0.0, 2.5, 3.0, 3.5, 4.0, 0.0], [3.0, 2.0, 6.0, 0.0, 0.0, 0.0]]
    discounted = long_term_rewards(rewards, mask, gamma=0.5, length_norm=False)
    assert discounted[0, :4].tolist() == [0.0, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0]


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 1.5}, "MiniLLM: alpha must be a number in [0, 1], got 1.5"),
        ({"temperature": 0.0}, "MiniLLM: temperature must be a positive number, got 0.0"),
        ({"clip_range": 0.0}, "MiniLLM: clip_range must be a number in (0, 1), got 0.0"),
        ({"gamma": 2}, "MiniLLM: gamma must be a number in [0, 1], got 2"),
        ({"reward_clip": -1.0}, "MiniLLM: reward_clip must be a positive number, got -1.0"),
        ({"max_new_tokens": 0}, "MiniLLM: max_new_tokens must be an integer >= 1, got 0"),
        ({"length_norm": "yes"}, "MiniLLM: length_norm must be true or false, got 'yes'"),
        ({"weight": -1.0}, "MiniLLM: weight must be a finite number >= 0, got -1.0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DistillError) as err:
        MiniLLM(**kwargs)
    assert str(err.value) == message


def test_the_config_option_builds_and_its_errors_surface_as_one_line(tmp_path: Path) -> None:
    cfg = compose_config(["lm_distill=[minillm,forward_kl]", f"paths.output_dir={tmp_path}"], name="lm")
    terms = build_terms(cfg, "lm_distill")
    term = terms["minillm"]
    assert isinstance(term, MiniLLM) and term.sequence_level and isinstance(terms["forward_kl"], ForwardKL)
    assert (term.alpha, term.clip_range, term.gamma, term.temperature) == (0.2, 0.2, 1.0, 1.0)
    assert term.length_norm and term.single_step and term.whiten and term.max_new_tokens is None
    bad = compose_config(["lm_distill=[minillm]", "lm_distill.minillm.alpha=-0.1", f"paths.output_dir={tmp_path}"],
                         name="lm")  # fmt: skip
    with pytest.raises(DistillError, match=r"^MiniLLM: alpha must be a number in \[0, 1\], got -0.1$"):
        build_terms(bad, "lm_distill")
    with pytest.raises(DistillError, match="sequence-level term"):
        term(None)


# -- (e) training ------------------------------------------------------------------------------


def test_a_module_trains_with_minillm_and_a_token_level_term_and_logs_the_parts() -> None:
    from distill.llm.data import SequenceBatches

    torch.manual_seed(0)
    student = causal_lm(40, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
    teacher = causal_lm(40, hidden_size=32, num_hidden_layers=2, intermediate_size=64, **TINY)
    before = [p.detach().clone() for p in student.parameters()]
    terms = {"minillm": MiniLLM(max_new_tokens=5), "forward_kl": ForwardKL(weight=0.5)}
    module = LMDistillationModule(student, {"t": teacher}, terms, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                                  prompt_len=4, eos_token_id=39, lm_weight=0.5)  # fmt: skip
    ids = torch.randint(0, 40, (16, 12), generator=torch.Generator().manual_seed(0))
    split = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, SequenceBatches(split, 8))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("minillm", "minillm/pg", "minillm/reg", "minillm/reward", "minillm/length", "forward_kl", "lm"):
        assert math.isfinite(logged[f"student/train/{name}"]), name
    assert logged["student/train/minillm/reg"] > 0 and 1 <= logged["student/train/minillm/length"] <= 5
    assert logged["student/train/minillm"] == pytest.approx(
        logged["student/train/minillm/pg"] + logged["student/train/minillm/reg"], rel=1e-4
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


@pytest.mark.slow
def test_distill_lm_runs_minillm_end_to_end(tmp_path: Path) -> None:
    from tests.test_llm_pipeline import tiny_lm_job

    from distill.spine import run

    overrides = tiny_lm_job(tmp_path, "lm_distill=[minillm,forward_kl]", "lm_distill.minillm.max_new_tokens=8",
                            "lm_student.fit.epochs=1", "samples.count=0")  # fmt: skip
    report = run(compose_config(overrides, name="lm"))
    rows = {r["model"]: r for r in report["models"]}
    assert 1.0 < rows["student"]["perplexity"] < 280 * 2
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("student/train/minillm", "student/train/minillm/pg", "student/train/minillm/reg",
                   "student/train/minillm/reward", "student/train/forward_kl"):  # fmt: skip
        assert column in header, column
