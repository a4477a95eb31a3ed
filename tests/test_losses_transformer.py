"""TinyBERT and MiniLM terms: hand-computed values on small tensors, and runs on tiny BERT models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.losses.base import StepView
from distill.losses.transformer import (
    MiniLMLoss,
    TinyBertAttentionLoss,
    TinyBertHiddenLoss,
    attention_kl,
    masked_softmax,
    scaled_dot,
    split_heads,
    uniform_layer_map,
)
from distill.taps import FeatureTaps


def view_of(student: dict, teacher: dict, mask: torch.Tensor | None) -> StepView:
    batch = next(iter(student.values())).shape[0]
    return StepView(
        student_logits=torch.zeros(batch, 2),
        teacher_logits=torch.zeros(batch, 2),
        teachers_logits={"t": torch.zeros(batch, 2)},
        student_features=student,
        teacher_features={"t": teacher},
        targets=torch.zeros(batch, dtype=torch.long),
        index=None,
        epoch=0,
        attention_mask=mask,
    )


def row(*values: float) -> torch.Tensor:
    return torch.tensor([[[v] for v in values]])  # [batch 1, length, width 1]


def test_uniform_layer_map_and_paths() -> None:
    assert uniform_layer_map(4, 12) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert uniform_layer_map(3, 12, embeddings=False) == [(1, 4), (2, 8), (3, 12)]
    assert uniform_layer_map(2, 3, embeddings=False) == [(1, 1), (2, 3)]  # 1·3/2 = 1.5 rounds down
    term = TinyBertHiddenLoss(student_num_layers=2, teacher_num_layers=4, teacher_prefix="roberta")
    assert term.student_layers == ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1")
    assert term.teacher_layers == ("roberta.embeddings", "roberta.encoder.layer.1", "roberta.encoder.layer.3")
    att = TinyBertAttentionLoss(student_heads=2, student_num_layers=1, teacher_num_layers=2)
    assert att.layer_map == [(1, 2)]
    assert att.teacher_layers == (
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.key",
    )


def test_hidden_mse_through_the_projection_by_hand() -> None:
    term = TinyBertHiddenLoss(layer_map=[[1, 1]])
    student = {"bert.encoder.layer.0": torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])}  # 2 tokens, width 2
    teacher = {"bert.encoder.layer.0": torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])}  # width 3
    view = view_of(student, teacher, torch.tensor([[1, 1]]))
    term.build(view)
    w = term.projections["hidden"]
    assert isinstance(w, nn.Linear) and (w.in_features, w.out_features) == (2, 3)
    with torch.no_grad():
        w.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        w.bias.zero_()
    # projected tokens [1, 2, 3] and [3, 4, 7]: squared errors 0+1+4 = 5 and 9+16+49 = 74, each / width 3
    assert term(view).item() == pytest.approx((5 / 3 + 74 / 3) / 2)
    assert term(view_of(student, teacher, torch.tensor([[1, 0]]))).item() == pytest.approx(5 / 3)  # padding out


def test_hidden_embeddings_get_their_own_projection_and_pairs_add_up() -> None:
    term = TinyBertHiddenLoss(layer_map=[[0, 0], [1, 2]])
    x = torch.tensor([[[1.0], [2.0]]])
    student = {"bert.embeddings": x, "bert.encoder.layer.0": x}
    teacher = {"bert.embeddings": torch.zeros(1, 2, 1), "bert.encoder.layer.1": torch.ones(1, 2, 1)}
    view = view_of(student, teacher, None)
    term.build(view)
    assert set(term.projections) == {"embeddings", "hidden"}
    assert all(isinstance(p, nn.Identity) for p in term.projections.values())  # equal widths: no map
    # embeddings: (1² + 2²)/2 = 2.5; layer 1 vs teacher layer 2: (0² + 1²)/2 = 0.5
    assert term(view).item() == pytest.approx(3.0)


def test_attention_kl_by_hand_with_padding() -> None:
    teacher = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.1, 0.1, 0.8]])
    student = torch.tensor([[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.8, 0.1, 0.1]])
    # head 0 differs, head 1 is equal (KL 0); the third position is padding (as a query and a key)
    t = torch.stack([teacher, teacher])[None]
    s = torch.stack([student, teacher])[None]
    mask = torch.tensor([[1, 1, 0]])
    q0 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    q1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert attention_kl(s, t, mask).item() == pytest.approx((q0 + q1) / 2 / 2)


def test_tinybert_attention_scores_mse_and_kl_by_hand() -> None:
    # one head of width 1: A[i, j] = q_i k_j / √1
    student = {
        "bert.encoder.layer.0.attention.self.query": row(1.0, 2.0),
        "bert.encoder.layer.0.attention.self.key": row(1.0, 0.0),
    }  # A_S = [[1, 0], [2, 0]]
    teacher = {
        "bert.encoder.layer.0.attention.self.query": row(0.0, 1.0),
        "bert.encoder.layer.0.attention.self.key": row(1.0, 1.0),
    }  # A_T = [[0, 0], [1, 1]]
    mse = TinyBertAttentionLoss(student_heads=1, layer_map=[[1, 1]])
    both = view_of(student, teacher, torch.tensor([[1, 1]]))
    first = view_of(student, teacher, torch.tensor([[1, 0]]))
    assert mse(both).item() == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert mse(first).item() == pytest.approx(1.0)  # only the (0, 0) entry is real
    kl = TinyBertAttentionLoss(student_heads=1, layer_map=[[1, 1]], kind="kl")
    e = math.e

    def kl_half(p: float) -> float:  # KL([½, ½] ‖ [p, 1 - p])
        return 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p))

    assert kl(both).item() == pytest.approx((kl_half(e / (e + 1)) + kl_half(e**2 / (e**2 + 1))) / 2)
    assert kl(first).item() == pytest.approx(0.0, abs=1e-7)  # one real key: both distributions are [1, 0]


def test_minilm_value_relation_by_hand() -> None:
    path = "bert.encoder.layer.{}.attention.self.{}"
    zeros = torch.zeros(1, 2, 1)  # equal queries and keys: uniform attention on both sides, L_AT = 0
    student = {path.format(0, "query"): zeros, path.format(0, "key"): zeros, path.format(0, "value"): row(1.0, 2.0)}
    teacher = {
        path.format(2, "query"): zeros,
        path.format(2, "key"): zeros,
        path.format(2, "value"): torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
    }
    term = MiniLMLoss(student_layer=1, teacher_layer=3, student_heads=1, teacher_heads=1)
    assert term.teacher_layers[2] == path.format(2, "value")
    # student V Vᵀ/√1 = [[1, 2], [2, 4]]; teacher V Vᵀ/√2 = [[c, 0], [0, c]] with c = 1/√2
    c = 1 / math.sqrt(2)

    def softmax(a: float, b: float) -> tuple[float, float]:
        return math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))

    def kl(p: tuple[float, float], q: tuple[float, float]) -> float:
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    expected = (kl(softmax(c, 0), softmax(1, 2)) + kl(softmax(0, c), softmax(2, 4))) / 2
    view = view_of(student, teacher, torch.tensor([[1, 1]]))
    term.build(view)
    assert term(view).item() == pytest.approx(expected)
    half = MiniLMLoss(student_layer=1, teacher_layer=3, student_heads=1, value_weight=0.5)
    assert half(view).item() == pytest.approx(expected / 2)


def tiny_bert(width: int, layers: int, heads: int = 2):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        max_position_embeddings=16,
        num_labels=3,
    )
    config._attn_implementation = "eager"  # so that output_attentions returns the attention matrices
    return transformers.BertForSequenceClassification(config)


def test_recomputed_attention_matches_the_models_own() -> None:
    torch.manual_seed(0)
    model = tiny_bert(8, 2).eval()
    ids, mask = torch.randint(0, 30, (2, 5)), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    paths = [f"bert.encoder.layer.1.attention.self.{p}" for p in ("query", "key")]
    taps = FeatureTaps(model, paths)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    q, k = (split_heads(taps.outputs[p], 2, "test") for p in paths)
    ours = masked_softmax(scaled_dot(q, k), mask)
    assert torch.allclose(ours, out.attentions[1], atol=1e-6)


def test_terms_run_on_tiny_bert_models_and_train_the_student_only() -> None:
    torch.manual_seed(0)
    student, teacher = tiny_bert(8, 2).train(), tiny_bert(16, 4).eval()
    terms = [
        TinyBertHiddenLoss(student_num_layers=2, teacher_num_layers=4),
        TinyBertAttentionLoss(student_heads=2, teacher_heads=2, student_num_layers=2, teacher_num_layers=4),
        TinyBertAttentionLoss(student_heads=2, student_num_layers=2, teacher_num_layers=4, kind="kl"),
        MiniLMLoss(student_layer=2, teacher_layer=4, student_heads=2),
    ]
    s_taps = FeatureTaps(student, [p for t in terms for p in t.student_layers], "student")
    t_taps = FeatureTaps(teacher, [p for t in terms for p in t.teacher_layers], "teacher")
    ids, mask = torch.randint(0, 30, (3, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    logits = student(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        teacher(input_ids=ids, attention_mask=mask)
    view = view_of(dict(s_taps.outputs), dict(t_taps.outputs), mask)
    view = StepView(**{**view.__dict__, "student_logits": logits})
    for term in terms:
        term.build(view)
    assert isinstance(terms[0].projections["hidden"], nn.Linear)  # width 8 -> 16
    values = [term(view) for term in terms]
    assert all(v.ndim == 0 and torch.isfinite(v) and v.item() > 0 for v in values)
    sum(values).backward()
    grads = [p.grad for p in student.bert.encoder.layer[0].attention.self.query.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert terms[0].projections["embeddings"].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_mismatched_lengths_are_refused_at_build() -> None:
    term = TinyBertHiddenLoss(layer_map=[[1, 1]])
    view = view_of({"bert.encoder.layer.0": torch.zeros(1, 4, 2)}, {"bert.encoder.layer.0": torch.zeros(1, 3, 2)}, None)
    with pytest.raises(DistillError, match="same batch and length"):
        term.build(view)


def test_longer_teacher_features_are_cut_to_the_batch() -> None:
    """Teacher outputs cached over rows padded to the split's longest: the positions past the batch's width
    are padding, left out (the loss equals the one on the first positions)."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    longer = torch.cat([t, 100 * torch.randn(2, 2, 4)], dim=1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    path = "bert.encoder.layer.0"
    term = TinyBertHiddenLoss(layer_map=[[1, 1]])
    term.build(view_of({path: s}, {path: t}, mask))
    exact = term(view_of({path: s}, {path: t}, mask))
    assert torch.equal(term(view_of({path: s}, {path: longer}, mask)), exact)
    assert exact.item() == pytest.approx(((s - t).pow(2).mean(-1) * mask).sum().item() / 5)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TinyBertAttentionLoss(student_heads=2, layer_map=[[1, 1]], kind="l1"), "kind must be 'mse' or 'kl'"),
        (
            lambda: TinyBertAttentionLoss(student_heads=2, teacher_heads=4, layer_map=[[1, 1]]),
            "same number of attention heads",
        ),
        (
            lambda: MiniLMLoss(student_layer=2, teacher_layer=4, student_heads=12, teacher_heads=16),
            "same number of attention heads",
        ),
        (lambda: TinyBertAttentionLoss(student_heads=2, layer_map=[[0, 0]]), "integers >= 1"),
        (lambda: TinyBertHiddenLoss(layer_map=[[1]]), "layer_map must be"),
        (lambda: TinyBertHiddenLoss(), "give layer_map, or student_num_layers"),
        (lambda: TinyBertHiddenLoss(student_num_layers=6, teacher_num_layers=4), "more layers"),
        (lambda: TinyBertHiddenLoss(layer_map=[[1, 1]], student_prefix=""), "student_prefix"),
        (
            lambda: MiniLMLoss(student_layer=0, teacher_layer=4, student_heads=2),
            "student_layer must be an integer >= 1",
        ),
        (lambda: MiniLMLoss(student_layer=2, teacher_layer=4, student_heads=2, value_weight=-1), "value_weight"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message: str) -> None:
    with pytest.raises(DistillError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_heads_must_divide_the_width() -> None:
    term = TinyBertAttentionLoss(student_heads=3, layer_map=[[1, 1]])
    paths = ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key")
    features = {p: torch.zeros(1, 2, 4) for p in paths}
    with pytest.raises(DistillError, match="divisible by 3 heads"):
        term.build(view_of(features, features, None))
