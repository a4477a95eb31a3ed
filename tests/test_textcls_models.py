"""Sequence classifiers of the text classification task: the one-tensor wrapper, models built from config
or loaded from a local folder (and the folders refused), and the student initialised from its teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.errors import DistillError
from distill.textcls.models import (
    SequenceClassifier,
    bert_classifier,
    init_from_teacher,
    pretrained_classifier,
    teacher_layers,
)


def tiny(layers: int = 4, hidden: int = 16, labels: int = 3, seed: int = 0, **kwargs) -> SequenceClassifier:
    torch.manual_seed(seed)
    return bert_classifier(
        vocab_size=30, num_labels=labels, hidden_size=hidden, num_layers=layers, heads=2, intermediate_size=32,
        max_positions=16, dropout=0.0, attention_dropout=0.0, **kwargs,
    )  # fmt: skip


def inputs(types: list[list[int]] | None = None) -> torch.Tensor:
    ids = torch.tensor([[2, 5, 6, 3, 7, 3], [2, 8, 3, 0, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[6], [3]])).long()
    token_types = torch.tensor(types) if types else torch.zeros_like(ids)
    return torch.stack([ids, mask, token_types], dim=1)


def test_the_wrapper_passes_ids_mask_and_token_types_to_the_model() -> None:
    model = tiny().eval()
    x = inputs([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        got = model(x)
        expected = model.model(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2]).logits
        without_types = model.model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    assert got.shape == (2, 3) and torch.equal(got, expected)
    assert not torch.allclose(got[0], without_types[0])  # the second segment's token types count
    assert model.token_types and model.backbone_path == "model.bert"
    assert (model.num_layers, model.num_heads, model.num_labels) == (4, 2, 3)
    # Padding does not move a row's logits: the mask keeps it out of attention.
    wider = torch.cat([x, torch.stack([torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2)], 1).long()], -1)
    with torch.no_grad():
        assert torch.allclose(model(wider), got, atol=1e-5)
    with pytest.raises(DistillError, match=r"\[batch, 3, length\]"):
        model(x[:, 0])


def test_bad_sizes_are_one_line_errors() -> None:
    with pytest.raises(DistillError, match="not divisible by heads"):
        bert_classifier(vocab_size=30, num_labels=2, hidden_size=10, heads=4)
    with pytest.raises(DistillError, match="num_labels"):
        bert_classifier(vocab_size=30, num_labels=1, hidden_size=8, heads=2)


def test_teacher_layers_every_kth_or_listed() -> None:
    assert teacher_layers(6, 12, 2, None) == [0, 2, 4, 6, 8, 10]  # DistilBERT's choice from BERT-base
    assert teacher_layers(2, 4, 2, None) == [0, 2]
    assert teacher_layers(2, 4, None, [1, 3]) == [1, 3]
    with pytest.raises(DistillError, match="does not exist"):
        teacher_layers(3, 4, 2, None)
    with pytest.raises(DistillError, match="names 1 teacher layers but the student has 2"):
        teacher_layers(2, 4, None, [1])


def test_init_from_teacher_copies_embeddings_every_kth_layer_and_the_head() -> None:
    teacher, student = tiny(layers=4, seed=1), tiny(layers=2, seed=2)
    assert init_from_teacher(student, teacher, every=2) == [0, 2]
    t, s = teacher.model, student.model
    assert torch.equal(s.bert.embeddings.word_embeddings.weight, t.bert.embeddings.word_embeddings.weight)
    assert torch.equal(s.bert.embeddings.position_embeddings.weight, t.bert.embeddings.position_embeddings.weight)
    assert torch.equal(s.bert.embeddings.LayerNorm.weight, t.bert.embeddings.LayerNorm.weight)
    for i, j in ((0, 0), (1, 2)):
        s_layer, t_layer = s.bert.encoder.layer[i].state_dict(), t.bert.encoder.layer[j].state_dict()
        assert s_layer.keys() == t_layer.keys()
        assert all(torch.equal(s_layer[k], t_layer[k]) for k in s_layer)
    assert not torch.equal(
        s.bert.encoder.layer[1].attention.self.query.weight, t.bert.encoder.layer[1].attention.self.query.weight
    )
    assert torch.equal(s.classifier.weight, t.classifier.weight) and torch.equal(
        s.bert.pooler.dense.bias, t.bert.pooler.dense.bias
    )
    # A teacher of 2 layers initialises a student of 2 layers to the very same network.
    twin = tiny(layers=2, seed=3)
    init_from_teacher(twin, tiny(layers=2, seed=1), every=1, layers=None)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), tiny(layers=2, seed=1).eval()(x))


def test_init_from_teacher_refuses_other_widths() -> None:
    with pytest.raises(DistillError, match="differ in hidden_size"):
        init_from_teacher(tiny(layers=2, hidden=8), tiny(layers=4, hidden=16), every=2)
    with pytest.raises(DistillError, match="differ in num_labels"):
        init_from_teacher(tiny(layers=2, labels=2), tiny(layers=4, labels=3), every=2)


def test_pretrained_folders_load_or_are_refused_in_one_line(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    classifier = tiny()
    classifier.model.save_pretrained(str(tmp_path / "cls"))
    loaded = pretrained_classifier(str(tmp_path / "cls"), vocab_size=30, num_labels=3, trains=False)
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), classifier.eval()(x), atol=1e-6)
    # A classifier of 3 classes fine-tuned on 2: a new head; used as it is: refused.
    assert pretrained_classifier(str(tmp_path / "cls"), num_labels=2, trains=True).num_labels == 2
    with pytest.raises(DistillError, match="predicts 3 classes but the data have 2"):
        pretrained_classifier(str(tmp_path / "cls"), num_labels=2, trains=False)
    with pytest.raises(DistillError, match="vocabulary has 30 entries but the tokenizer has 50"):
        pretrained_classifier(str(tmp_path / "cls"), vocab_size=50, num_labels=3)
    # A masked-LM encoder (the usual start of fine-tuning) trains with a new head, but is not a teacher as it is.
    small = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertForMaskedLM(small).save_pretrained(str(tmp_path / "mlm"))
    assert pretrained_classifier(str(tmp_path / "mlm"), num_labels=4, trains=True).num_labels == 4
    with pytest.raises(DistillError, match=r"is not a sequence-classification model \(BertForMaskedLM\)"):
        pretrained_classifier(str(tmp_path / "mlm"), num_labels=4, trains=False)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=30)).save_pretrained(str(tmp_path / "gpt"))
    from transformers import AutoConfig

    AutoConfig.for_model("vit").save_pretrained(str(tmp_path / "vit"))
    with pytest.raises(DistillError, match="'vit' model, which has no sequence-classification head"):
        pretrained_classifier(str(tmp_path / "vit"), num_labels=2)
    with pytest.raises(DistillError, match="pretrained folder not found"):
        pretrained_classifier(str(tmp_path / "missing"), num_labels=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="cannot read a model config"):
        pretrained_classifier(str(tmp_path / "empty"), num_labels=2)
