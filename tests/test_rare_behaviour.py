"""Rare behaviour in the report: each model's accuracy on each class, the worst class, the classes the student
lost most against the teacher (classification), and the perplexity on the rarest tenth of test tokens (LMs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill.measure import per_class_accuracy
from distill.report import lost_classes, markdown_table, per_class_markdown
from distill.tasks.causal_lm import evaluate, rare_positions, train_counts


def test_accuracy_per_class_by_hand() -> None:
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2, 0, 0, 0])  # a: 3/4, b: 1/2, c: 1/4
    logits = torch.nn.functional.one_hot(predicted, 4).float()  # a fourth class without a test sample
    got = per_class_accuracy(logits, targets, ["a", "b", "c", "d"])
    assert got == {
        "per_class_accuracy": {"a": 0.75, "b": 0.5, "c": 0.25},
        "worst_class": "c",
        "worst_class_accuracy": 0.25,
    }
    assert per_class_accuracy(logits, targets)["per_class_accuracy"] == {"0": 0.75, "1": 0.5, "2": 0.25}
    # a tie: the first class of the tied ones
    tie = per_class_accuracy(torch.nn.functional.one_hot(torch.tensor([1, 0]), 2).float(), torch.tensor([0, 1]))
    assert tie["worst_class"] == "0" and tie["worst_class_accuracy"] == 0.0


def rows(student: dict[str, float]) -> list[dict]:
    teacher = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    return [
        {"model": "teacher:t", "role": "teacher", "accuracy": 0.75, "per_class_accuracy": teacher},
        {"model": "baseline", "role": "baseline", "accuracy": 0.5, "per_class_accuracy": {k: 0.5 for k in teacher}},
        {"model": "student", "role": "student", "accuracy": 0.7, "per_class_accuracy": student},
    ]


def test_the_classes_the_student_lost_most() -> None:
    lost = lost_classes(rows({"a": 0.5, "b": 0.8, "c": 0.6, "d": 0.55}))  # drops 0.4, 0, 0.1, 0.05
    assert [d["class"] for d in lost] == ["a", "c", "d"]
    assert [d["drop"] for d in lost] == pytest.approx([0.4, 0.1, 0.05])
    assert lost[0] == {"class": "a", "teacher": 0.9, "student": 0.5, "drop": pytest.approx(0.4)}
    assert len(lost_classes(rows({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}))) == 3  # the top three only
    assert lost_classes(rows({"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9})) == []  # nothing lost
    text = per_class_markdown(rows({"a": 0.5, "b": 0.8, "c": 0.6, "d": 0.55}), lost)
    assert "| class | teacher:t | baseline | student |" in text and "| a | 0.9000 | 0.5000 | 0.5000 |" in text
    assert "- a: 0.9000 → 0.5000 (−0.4000)" in text
    assert "at least as accurate as the teacher on every class" in per_class_markdown(
        rows({"a": 1, "b": 1, "c": 1, "d": 1}), []
    )


def test_the_worst_class_is_a_column_of_the_table() -> None:
    table = markdown_table([{"model": "student", "accuracy": 0.7, "worst_class": "c", "worst_class_accuracy": 0.25}])
    assert "| worst class | worst class acc |" in table and "| c | 0.2500 |" in table


def test_rarest_tenth_of_test_tokens() -> None:
    counts = torch.tensor([100, 5, 50, 1, 0])
    targets = torch.tensor([0, 1, 2, 3, 0, 0, 2, 1, 0, 2, 0, 0, 2, 0, 0, 0, 2, 0, 0, 4])  # 20 positions
    mask = rare_positions(targets, counts)  # the 2 rarest: token 4 (count 0) at 19, token 3 (count 1) at 3
    assert mask.nonzero().flatten().tolist() == [3, 19]
    assert rare_positions(targets[:3], counts).nonzero().flatten().tolist() == [1]  # at least one


class FixedLM(nn.Module):
    """Logits giving the true next token probability `p[token]` at every position (vocabulary of 5)."""

    def __init__(self, ids: torch.Tensor, p: list[float]) -> None:
        super().__init__()
        self.ids, self.p = ids, torch.tensor(p)

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kwargs):
        nxt = torch.roll(self.ids, -1, dims=1)
        right = self.p[nxt][..., None]
        probs = ((1 - right) / 4).expand(*nxt.shape, 5).clone()
        probs.scatter_(2, nxt[..., None], right)
        return SimpleNamespace(logits=probs.log())


def test_rare_perplexity_by_hand() -> None:
    ids = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 0, 0, 3, 0]])  # targets: 1 0 0 2 0 0 0 0 3 0 (10 positions)
    dm = SimpleNamespace(tensors={"train": {"labels": torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])}}, vocab_size=5)
    counts = train_counts(dm)
    assert counts.tolist() == [3, 2, 3, 0, 0]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    model = FixedLM(ids, [0.5, 0.5, 0.5, 0.125, 0.5])  # the rare token 3 predicted at 1/8, the rest at 1/2
    got = evaluate(model, [batch], counts=counts)
    assert got["perplexity"] == pytest.approx(math.exp((9 * math.log(2) + math.log(8)) / 10))
    assert got["rare_perplexity"] == pytest.approx(8.0)  # the one rarest target (10% of 10): token 3
    assert "rare_perplexity" not in evaluate(model, [batch])
