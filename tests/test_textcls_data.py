"""Text classification data: formats, labels, pairs, truncation, padding, splits, tokenizer cache,
fingerprint, the stdlib docstring source and the one-line errors of bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from distill.errors import DistillError
from distill.textcls import AREAS, TextClassificationData, stdlib_docstrings
from distill.textcls.tokenizer import SPECIAL_TOKENS

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6, "d": 7}


@pytest.fixture
def word_tokenizer(tmp_path: Path) -> str:
    """A tiny word-level tokenizer saved as a pretrained folder: ids of VOCAB, rows [CLS] a [SEP] (b [SEP])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    folder = tmp_path / "word_tokenizer"
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data(tmp_path: Path, **kwargs) -> TextClassificationData:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return TextClassificationData(source="files", **kwargs)


def test_csv_string_labels_and_pairs(tmp_path, word_tokenizer):
    header = ["premise", "hypothesis", "label"]
    train = write_csv(tmp_path / "train.csv", header, [["a b", "c", "yes"], ["d", "a b c", "no"], ["c", "d", "yes"]])
    val = write_csv(tmp_path / "val.csv", header, [["b", "b", "no"]])
    test = write_csv(tmp_path / "test.csv", header, [["a", "d d", "yes"]])
    d = data(
        tmp_path,
        train=str(train),
        val=str(val),
        test=str(test),
        text_field="premise",
        text_pair_field="hypothesis",
        tokenizer=word_tokenizer,
        batch_size=2,
    )
    d.setup()
    assert d.class_names == ["no", "yes"] and d.num_classes == 2 and d.vocab_size == 8
    t = d.tensors["train"]
    assert t["input_ids"].tolist() == [[2, 4, 5, 3, 6, 3, 0], [2, 7, 3, 4, 5, 6, 3], [2, 6, 3, 7, 3, 0, 0]]
    assert t["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7, [1, 1, 1, 1, 1, 0, 0]]
    assert t["labels"].tolist() == [1, 0, 1]
    assert d.tensors["val"]["labels"].tolist() == [0] and d.tensors["test"]["input_ids"].tolist() == [
        [2, 4, 3, 7, 7, 3]
    ]
    batch = next(iter(d.test_dataloader()))
    assert set(batch) == {"x", "y", "index", "attention_mask"}
    assert batch["x"].tolist() == [[[2, 4, 3, 7, 7, 3], [1] * 6, [0, 0, 0, 1, 1, 1]]]  # ids, mask, token types
    assert "sentence pairs, 2 classes (no, yes)" in d.describe()


def test_jsonl_integer_labels_truncation_and_dynamic_padding(tmp_path, word_tokenizer):
    rows = [
        {"text": "a b c d a b", "label": 0},
        {"text": "a", "label": 1},
        {"text": "b c", "label": 2},
        {"text": "d", "label": 1},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    d = data(
        tmp_path,
        train=str(train),
        val=str(train),
        test=str(train),
        tokenizer=word_tokenizer,
        max_length=4,
        eval_batch_size=2,
    )
    d.setup()
    assert d.class_names == ["0", "1", "2"]
    t = d.tensors["val"]
    assert "token_type_ids" not in t
    assert t["input_ids"].tolist() == [[2, 4, 5, 3], [2, 4, 3, 0], [2, 5, 6, 3], [2, 7, 3, 0]]
    assert t["lengths"].tolist() == [4, 3, 4, 3]
    batches = list(d.val_dataloader())
    assert [b["x"].shape for b in batches] == [(2, 3, 4), (2, 3, 4)]
    rows_34 = d.val_dataloader().rows(torch.tensor([1, 3]))  # two rows of 3 tokens: a batch 3 wide
    assert rows_34["x"][:, 0].tolist() == [[2, 4, 3], [2, 7, 3]] and rows_34["y"].tolist() == [1, 1]
    assert rows_34["x"][:, 1].tolist() == [[1, 1, 1]] * 2 and rows_34["x"][:, 2].tolist() == [[0, 0, 0]] * 2
    assert rows_34["attention_mask"].tolist() == [[1, 1, 1]] * 2 and rows_34["index"].tolist() == [1, 3]
    full = d.val_dataloader().inputs(1, 3)  # rows 1 and 2 at the split's full width
    assert full[:, 0].tolist() == [[2, 4, 3, 0], [2, 5, 6, 3]] and full[:, 1].tolist() == [[1, 1, 1, 0], [1] * 4]
    assert d.model_inputs("val", 2, width=6)[:, 0].tolist() == [[2, 4, 5, 3, 0, 0], [2, 4, 3, 0, 0, 0]]
    assert d.model_inputs("val", 1, width=2)[:, 0].tolist() == [[2, 4]]


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv"])
def test_hf_formats(tmp_path, word_tokenizer, fmt):
    rows = [{"sentence": "a b", "label": "pos"}, {"sentence": "c", "label": "neg"}]
    path = tmp_path / f"train.{fmt}"
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    elif fmt == "json":
        write_jsonl(path, rows)
    else:
        write_csv(path, ["sentence", "label"], [[r["sentence"], r["label"]] for r in rows])
    d = data(
        tmp_path,
        train=str(path),
        val=str(path),
        test=str(path),
        hf_format=fmt,
        text_field="sentence",
        tokenizer=word_tokenizer,
    )
    d.setup()
    assert d.class_names == ["neg", "pos"]
    assert d.tensors["train"]["input_ids"].tolist() == [[2, 4, 5, 3], [2, 6, 3, 0]]
    assert d.tensors["train"]["labels"].tolist() == [1, 0]


def test_fraction_splits_are_stratified_disjoint_and_seeded(tmp_path, word_tokenizer):
    rows = [{"text": "a " * (i + 1), "label": "x" if i % 2 else "y"} for i in range(20)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)

    def splits(seed):
        d = data(
            tmp_path,
            train=str(path),
            tokenizer=word_tokenizer,
            val_fraction=0.2,
            test_fraction=0.2,
            seed=seed,
            max_length=64,
        )
        d.setup()
        return {s: [e.where for e in d.examples[s]] for s in ("train", "val", "test")}, d

    first, d = splits(0)
    assert [len(first[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(sum(first.values(), [])) == sorted(f"{path}, line {i}" for i in range(1, 21))
    for s in ("val", "test"):  # stratified: two of each class
        assert sorted(e.label for e in d.examples[s]) == ["x", "x", "y", "y"]
    assert splits(0)[0] == first and splits(1)[0] != first


def test_trained_tokenizer_cached_and_pairs(tmp_path):
    rows = [{"a": "the cat sat", "b": "a cat", "label": "yes"}, {"a": "the dog ran", "b": "no cat", "label": "no"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    for kind in ("wordpiece", "bpe"):
        d = data(
            tmp_path,
            train=str(path),
            val=str(path),
            test=str(path),
            text_field="a",
            text_pair_field="b",
            tokenizer=kind,
            vocab_size=300,
        )
        d.setup()
        tok = d.tokenizer
        assert [tok.convert_ids_to_tokens(i) for i in range(5)] == SPECIAL_TOKENS
        ids, types = d.tensors["train"]["input_ids"][0].tolist(), d.tensors["train"]["token_type_ids"][0].tolist()
        sep = [i for i, t in enumerate(ids) if t == tok.sep_token_id]
        assert ids[0] == tok.cls_token_id and len(sep) == 2 and sep[1] == len(ids) - 1 or ids[sep[1] + 1] == 0
        assert types[: sep[0] + 1] == [0] * (sep[0] + 1) and set(types[sep[0] + 1 : sep[1] + 1]) == {1}
        assert tok.decode(ids, skip_special_tokens=True).split() == ["the", "cat", "sat", "a", "cat"]
        stamp = d.tokenizer_path.stat().st_mtime_ns
        again = data(
            tmp_path,
            train=str(path),
            val=str(path),
            test=str(path),
            text_field="a",
            text_pair_field="b",
            tokenizer=kind,
            vocab_size=300,
        )
        again.setup()
        assert again.tokenizer_path == d.tokenizer_path and d.tokenizer_path.stat().st_mtime_ns == stamp
        assert again.fingerprint() == d.fingerprint()
    assert len(list((tmp_path / "cache").glob("tokenizer-*.json"))) == 2


def test_fingerprint_changes_with_one_label(tmp_path, word_tokenizer):
    rows = [{"text": "a b", "label": 0}, {"text": "c", "label": 1}, {"text": "d", "label": 1}]
    prints = []
    for last in (1, 0):
        rows[2]["label"] = last
        path = write_jsonl(tmp_path / f"train{last}.jsonl", rows)
        d = data(tmp_path, train=str(path), val=str(path), test=str(path), tokenizer=word_tokenizer)
        prints.append(d.fingerprint())
    assert prints[0] != prints[1]


def test_stdlib_docstrings_source():
    splits = stdlib_docstrings()
    examples = [e for s in splits.values() for e in s]
    assert len(examples) >= 5000
    assert {e.label for e in splits["train"]} == set(AREAS) and len(AREAS) >= 4
    for s in ("val", "test"):
        assert {e.label for e in splits[s]} == set(AREAS)
    files = {s: {e.group for e in splits[s]} for s in splits}
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    assert len({e.text for e in examples}) == len(examples)  # no text in two places
    assert stdlib_docstrings() == splits  # deterministic


def _bad(tmp_path, word_tokenizer, case):
    csv_path = tmp_path / "train.csv"
    if case == "no tokenizer folder":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
        t = str(tmp_path / "t.jsonl")
        return data(
            tmp_path, train=t, val=t, test=t, tokenizer=str(tmp_path / "missing")
        ), "tokenizer directory not found"
    if case == "missing text":
        write_csv(csv_path, ["text", "label"], [["a", "x"], ["b", "y"]])
        return data(
            tmp_path, train=str(csv_path), text_field="sentence", tokenizer=word_tokenizer
        ), f"{csv_path}, row 1 (line 2): no field 'sentence'"
    if case == "missing pair":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "b": "c", "label": 0}, {"text": "b", "label": 1}])
        return data(
            tmp_path, train=str(tmp_path / "t.jsonl"), text_pair_field="b", tokenizer=word_tokenizer
        ), "t.jsonl, line 2: no field 'b'"
    if case == "missing label":
        write_csv(csv_path, ["text", "label"], [["a", "x"], ["b"]])
        return data(
            tmp_path, train=str(csv_path), tokenizer=word_tokenizer
        ), f"{csv_path}, row 2 (line 3): no field 'label'"
    if case == "empty file":
        csv_path.write_text("text,label\n")
        return data(tmp_path, train=str(csv_path), tokenizer=word_tokenizer), f"{csv_path}: no examples"
    if case == "empty split":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
        return data(
            tmp_path,
            train=str(tmp_path / "t.jsonl"),
            val_fraction=0,
            test=str(tmp_path / "t.jsonl"),
            tokenizer=word_tokenizer,
        ), "split 'val' is empty"
    if case == "unparsable label":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1.5}])
        return data(
            tmp_path, train=str(tmp_path / "t.jsonl"), tokenizer=word_tokenizer
        ), "t.jsonl, line 2: label 'label' must be an integer or a class name, got 1.5"
    if case == "mixed labels":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "cat"}])
        return data(
            tmp_path, train=str(tmp_path / "t.jsonl"), tokenizer=word_tokenizer
        ), "t.jsonl, line 2: label 'cat' is a class name but"
    if case == "integers not 0..K-1":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
        return data(
            tmp_path,
            train=str(tmp_path / "t.jsonl"),
            val=str(tmp_path / "t.jsonl"),
            test=str(tmp_path / "t.jsonl"),
            tokenizer=word_tokenizer,
        ), "t.jsonl, line 2: integer label 2 is outside 0..1"
    if case == "label only in test":
        write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
        write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": "x"}, {"text": "c", "label": "z"}])
        return data(
            tmp_path,
            train=str(tmp_path / "t.jsonl"),
            val=str(tmp_path / "t.jsonl"),
            test=str(tmp_path / "u.jsonl"),
            tokenizer=word_tokenizer,
        ), "u.jsonl, line 2: label 'z' (test) is not in the training split (classes: x, y)"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "no tokenizer folder",
        "missing text",
        "missing pair",
        "missing label",
        "empty file",
        "empty split",
        "unparsable label",
        "mixed labels",
        "integers not 0..K-1",
        "label only in test",
    ],
)
def test_bad_input_is_one_line(tmp_path, word_tokenizer, case):
    d, expected = _bad(tmp_path, word_tokenizer, case)
    with pytest.raises(DistillError) as err:
        d.setup()
    message = str(err.value)
    assert expected in message and "\n" not in message
