"""Text data for causal-LM distillation: sources, splits, tokenizer, packing/padding, loaders, errors."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from tests.builders import WORDS, sentences
from tests.conftest import compose_config

from distill.errors import DistillError
from distill.llm.data import IGNORE_INDEX, STDLIB_SKIP, SequenceBatches, TextDataModule


def write_texts(folder: Path, sizes: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"doc{i}.txt"
        path.write_text(sentences(i, size), encoding="utf-8")
        paths.append(str(path))
    return paths


def tiny(tmp_path: Path, **kwargs) -> TextDataModule:
    defaults = dict(source="text", vocab_size=300, seq_len=32, cache_dir=str(tmp_path / "cache"), batch_size=4)
    return TextDataModule(**{**defaults, **kwargs})


def write_pairs(path: Path, n: int = 8) -> list[dict]:
    rows = [
        {"prompt": f"Question {i}: what does the {WORDS[i]} do?\n", "completion": f" It {WORDS[-1 - i]} {i} times."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    dm = TextDataModule(
        max_chars=300_000,
        vocab_size=300,
        seq_len=64,
        val_fraction=0.1,
        test_fraction=0.1,
        cache_dir=str(tmp_path_factory.mktemp("lm")),
        seed=1,
    )
    dm.setup()
    return dm


def test_stdlib_corpus_splits_by_file(stdlib: TextDataModule) -> None:
    names = {s: [d.name for d in stdlib.documents[s]] for s in ("train", "val", "test")}
    assert all(names.values()), {s: len(n) for s, n in names.items()}
    sets = {s: set(n) for s, n in names.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    every = [n for s in names.values() for n in s]
    assert every and all(n.endswith(".py") for n in every)
    assert not any(STDLIB_SKIP & set(n.split("/")[:-1]) for n in every)
    # the split of a file depends on its relative path alone (a stable hash, not Python's salted one)
    for split, files in names.items():
        for name in files:
            bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000
            assert split == ("val" if bucket < 100 else "test" if bucket < 200 else "train")
    assert sum(len(d.text) for s in stdlib.documents.values() for d in s) == 300_000
    assert stdlib.vocab_size == 300 and stdlib.tokenizer_path.is_file()
    for split in ("train", "val", "test"):
        t = stdlib.tensors[split]
        assert t["input_ids"].shape[1] == 64 and t["input_ids"].dtype == torch.long
        assert set(t) == {"input_ids", "attention_mask", "labels"}
        assert bool((t["attention_mask"] == 1).all()) and torch.equal(t["labels"], t["input_ids"])
    assert stdlib.num_tokens("train") == stdlib.tensors["train"]["input_ids"].numel()
    line = stdlib.describe()
    assert "train /" in line and "sequences of 64 tokens, vocabulary 300" in line
    head = stdlib.decode(stdlib.tensors["train"]["input_ids"][:4].flatten())  # blocks are the files in order
    assert "<|endoftext|>".join(d.text for d in stdlib.documents["train"]).startswith(head) and len(head) > 100


def test_stdlib_files_are_chosen_in_hash_order_and_cut(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "lib"
    names = [f"pkg/mod{i}.py" for i in range(6)] + [f"a{i}.py" for i in range(6)] + ["z/deep/end.py"]
    skipped = ["test/t.py", "pkg/tests/t.py", "idlelib/i.py", "site-packages/s.py", "notes.txt", "pkg/latin1.py"]
    for i, name in enumerate(names + skipped):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n" + sentences(i, 1000), encoding="utf-8")
    (root / "pkg/latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))  # not UTF-8: skipped
    monkeypatch.setattr("distill.llm.data.sources.sysconfig.get_paths", lambda: {"stdlib": str(root)})
    dm = TextDataModule(vocab_size=300, seq_len=16, val_fraction=0.3, test_fraction=0.3, cache_dir=str(tmp_path / "c"))
    dm.setup()
    docs = {d.name: d for split in dm.documents.values() for d in split}
    assert sorted(docs) == sorted(names) and dm.corpus_stats["skipped"] == 1
    assert all(d.complete for d in docs.values())
    order = sorted(names, key=lambda n: hashlib.sha256(f"order:{n}".encode()).hexdigest())
    limit = sum(len((root / n).read_text()) for n in order[:3]) + 10
    cut = TextDataModule(vocab_size=300, seq_len=16, val_fraction=0.3, test_fraction=0.3, max_chars=limit)
    cut_docs = [d for split in cut._load_splits().values() for d in split]
    assert sorted(d.name for d in cut_docs) == sorted(order[:4])  # in hash order of their paths, the 4th cut short
    assert sum(len(d.text) for d in cut_docs) == limit and [d.complete for d in cut_docs].count(False) == 1


def test_packing_concatenates_documents_with_eos(tmp_path: Path) -> None:
    paths = write_texts(tmp_path / "docs", [1500, 400, 900, 2000, 700, 1200])
    dm = tiny(tmp_path, paths=paths, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert {len(dm.documents[s]) for s in ("val", "test")} == {1}  # round(6 * 0.2) = 1 document each
    assert sorted(d.name for s in dm.documents.values() for d in s) == sorted(paths)
    for split in ("train", "val", "test"):
        stream = []
        for doc in dm.documents[split]:
            stream += dm.tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [dm.eos_token_id]
        ids = dm.tensors[split]["input_ids"]
        assert ids.shape == (len(stream) // 32, 32)
        assert ids.flatten().tolist() == stream[: ids.numel()]
    # the tokenizer saw the training split only: every text round-trips through it
    assert (
        dm.decode(dm.tensors["train"]["input_ids"][0])
        == dm.documents["train"][0].text[: len(dm.decode(dm.tensors["train"]["input_ids"][0]))]
    )


def test_few_documents_split_by_characters(tmp_path: Path) -> None:
    [path] = write_texts(tmp_path / "docs", [6000])
    text = Path(path).read_text()
    dm = tiny(tmp_path, paths=path, val_fraction=0.1, test_fraction=0.2)  # a single str path
    dm.setup()
    parts = {s: dm.documents[s] for s in ("train", "val", "test")}
    assert all(len(p) == 1 for p in parts.values())
    assert parts["train"][0].text + parts["val"][0].text + parts["test"][0].text == text
    assert len(parts["test"][0].text) == pytest.approx(0.2 * len(text), abs=1)
    assert [p[0].complete for p in parts.values()] == [False, False, True]  # eos only where the file ends
    assert dm.eos_token_id not in dm.tensors["train"]["input_ids"]


def test_pad_mode_masks_padding(tmp_path: Path) -> None:
    paths = write_texts(tmp_path / "docs", [60, 300, 90, 2000, 150, 40, 700, 120])
    dm = tiny(tmp_path, paths=paths, mode="pad", seq_len=48, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    for split in ("train", "val", "test"):
        t = dm.tensors[split]
        assert t["input_ids"].shape == (len(dm.documents[split]), 48)
        real = t["attention_mask"].bool()
        assert torch.equal(t["labels"][real], t["input_ids"][real])
        assert bool((t["labels"][~real] == IGNORE_INDEX).all()) and bool(
            (t["input_ids"][~real] == dm.pad_token_id).all()
        )
        for row, doc in zip(t["input_ids"], dm.documents[split], strict=True):
            ids = dm.tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [dm.eos_token_id]
            assert row[: min(len(ids), 48)].tolist() == ids[:48]
    lengths = dm.tensors["train"]["attention_mask"].sum(1)
    assert int(lengths.min()) < 48 and int(lengths.max()) == 48  # short documents padded, long ones truncated
    assert dm.num_tokens("train") == int(lengths.sum())
    ids, mask = dm.prompts("train", 3, prompt_len=20)
    for row, m, full in zip(ids, mask, dm.tensors["train"]["input_ids"][:3], strict=True):
        real = row[m.bool()]
        assert bool((m[: len(row) - len(real)] == 0).all())  # left padding
        assert real.tolist() == full[: len(real)].tolist() and len(real) <= 20


def test_jsonl_prompt_completion_learns_the_completion_only(tmp_path: Path) -> None:
    rows = write_pairs(tmp_path / "pairs.jsonl")
    dm = tiny(tmp_path, source="jsonl", paths=[str(tmp_path / "pairs.jsonl")], prompt_field="prompt",
              completion_field="completion", val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    dm.setup()  # mode=pack is overridden: a pair is one padded sequence
    by_prompt = {r["prompt"]: r["completion"] for r in rows}
    for split in ("train", "val", "test"):
        t = dm.tensors[split]
        assert len(dm.documents[split]) == len(t["input_ids"]) == (4 if split == "train" else 2)
        for i, pair in enumerate(dm.documents[split]):
            prompt_ids = dm.tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
            labels = t["labels"][i]
            assert bool((labels[: len(prompt_ids)] == IGNORE_INDEX).all())
            assert labels[len(prompt_ids)] != IGNORE_INDEX
            assert dm.decode(labels[labels != IGNORE_INDEX]) == by_prompt[pair.prompt] + "<|endoftext|>"
            assert (
                dm.decode(t["input_ids"][i][t["attention_mask"][i].bool()])
                == pair.prompt + pair.completion + "<|endoftext|>"
            )
    ids, mask = dm.prompts("val", 2)
    assert dm.decode([row[m.bool()] for row, m in zip(ids, mask, strict=True)]) == [
        p.prompt for p in dm.documents["val"]
    ]
    assert bool((mask[:, -1] == 1).all())  # left-padded: every prompt ends at the last column
    assert dm.decode(ids) == [p.prompt for p in dm.documents["val"]]  # padding is dropped when decoding
    assert dm.num_tokens("val") == sum(
        len(dm.tokenizer(p.completion, add_special_tokens=False)["input_ids"]) + 1 for p in dm.documents["val"]
    )


def test_hf_json_and_csv_from_local_files(tmp_path: Path) -> None:
    texts = [sentences(i, 400) for i in range(6)]
    (tmp_path / "docs.json").write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    dm = tiny(tmp_path, source="hf", hf_format="json", paths=[str(tmp_path / "docs.json")], text_field="body",
              val_fraction=0.2, test_fraction=0.2, seq_len=16)  # fmt: skip
    dm.setup()
    assert sorted(d.text for s in dm.documents.values() for d in s) == sorted(texts)
    assert dm.tensors["val"]["input_ids"].shape[1] == 16

    rows = write_pairs(tmp_path / "unused.jsonl", 6)
    lines = ["question,answer"] + ['"{}","{}"'.format(r["prompt"].replace('"', '""'), r["completion"]) for r in rows]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    dm = tiny(tmp_path, source="hf", hf_format="csv", paths=str(tmp_path / "pairs.csv"), prompt_field="question",
              completion_field="answer", val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    dm.setup()
    got = sorted((p.prompt, p.completion) for s in dm.documents.values() for p in s)
    assert got == sorted((r["prompt"], r["completion"]) for r in rows)
    labels = dm.tensors["test"]["labels"][0]
    assert dm.decode(labels[labels != IGNORE_INDEX]) == dm.documents["test"][0].completion + "<|endoftext|>"


def test_tokenizer_is_cached_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    paths = write_texts(tmp_path / "docs", [800, 800, 800, 800])
    first = tiny(tmp_path, paths=paths)
    first.setup()
    assert first.tokenizer_path.parent == tmp_path / "cache" and first.tokenizer_path.name.startswith("tokenizer-")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.tokenizer_path.name]  # no temporary left

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should be reused")

    monkeypatch.setattr(TextDataModule, "_train_bpe", no_training)
    second = tiny(tmp_path, paths=paths)
    with caplog.at_level(logging.INFO, logger="distill.llm.data"):
        second.setup()
    assert f"Reusing tokenizer {first.tokenizer_path}" in caplog.text
    assert second.tokenizer_path == first.tokenizer_path
    for split in ("train", "val", "test"):
        assert torch.equal(first.tensors[split]["input_ids"], second.tensors[split]["input_ids"])
    other = tiny(tmp_path, paths=paths, vocab_size=280)  # another vocabulary: another file
    assert other._cache_key() != first._cache_key()


def test_local_pretrained_tokenizer_directory(tmp_path: Path) -> None:
    paths = write_texts(tmp_path / "docs", [800, 800, 800, 800])
    trained = tiny(tmp_path, paths=paths)
    trained.setup()
    trained.tokenizer.save_pretrained(tmp_path / "tok")
    loaded = tiny(tmp_path, paths=paths, tokenizer=str(tmp_path / "tok"))
    loaded.setup()
    assert loaded.tokenizer_path is None and loaded.vocab_size == trained.vocab_size
    assert (loaded.pad_token_id, loaded.eos_token_id) == (trained.pad_token_id, trained.eos_token_id)
    for split in ("train", "val", "test"):
        assert torch.equal(loaded.tensors[split]["input_ids"], trained.tensors[split]["input_ids"])

    # a tokenizer without a pad token pads with eos
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=trained.tokenizer.backend_tokenizer, eos_token="<|endoftext|>"
    ).save_pretrained(tmp_path / "no_pad")
    no_pad = tiny(tmp_path, paths=paths, mode="pad", seq_len=1024, tokenizer=str(tmp_path / "no_pad"))
    assert no_pad.pad_token_id == no_pad.eos_token_id == trained.eos_token_id
    t = no_pad.tensors["train"]
    ends = t["attention_mask"].sum(1) - 1
    assert int(ends.max()) < 1023 and bool((t["input_ids"][:, -1] == no_pad.pad_token_id).all())
    assert bool((t["labels"][torch.arange(len(ends)), ends] == no_pad.eos_token_id).all())  # eos kept, padding masked


def test_batches_are_reproducible_by_seed_and_epoch(tmp_path: Path) -> None:
    paths = write_texts(tmp_path / "docs", [3000, 3000, 3000, 3000])
    dm = tiny(tmp_path, paths=paths, seq_len=16, val_fraction=0.25, test_fraction=0.25)
    dm.setup()

    def order(loader: SequenceBatches, epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    a, b = dm.train_dataloader(), dm.train_dataloader(batch_size=3)
    assert isinstance(a, SequenceBatches) and a.deterministic and a.batch_size == 4 and b.batch_size == 3
    assert order(a, 2) == order(b, 2) != order(a, 3)
    assert sorted(order(a, 5)) == list(range(dm.num_sequences("train")))
    c = tiny(tmp_path, paths=paths, seq_len=16, val_fraction=0.25, test_fraction=0.25, seed=7).train_dataloader()
    assert order(c, 2) != order(a, 2)
    batch = next(iter(a))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape == (4, 16) and batch["index"].dtype == torch.long
    assert torch.equal(batch["input_ids"], dm.tensors["train"]["input_ids"][batch["index"]])
    val = dm.val_dataloader()
    assert order(val, 0) == list(range(dm.num_sequences("val")))  # evaluation is never shuffled
    assert len(dm.test_dataloader()) == -(-dm.num_sequences("test") // 64)


def test_train_fraction_is_a_fixed_seeded_subset(tmp_path: Path) -> None:
    paths = write_texts(tmp_path / "docs", [3000, 3000, 3000, 3000])
    dm = tiny(tmp_path, paths=paths, seq_len=16, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    n = dm.num_sequences("train")
    assert dm.train_rows(None) is None and dm.train_rows(1.0) is None
    rows = dm.train_rows(0.25)
    assert len(rows) == round(n * 0.25) and len(set(rows.tolist())) == len(rows) and rows.max() < n
    assert torch.equal(rows, dm.train_rows(0.25))  # the same rows every time: baseline and student share them
    other = tiny(tmp_path, paths=paths, seq_len=16, val_fraction=0.25, test_fraction=0.25, seed=9)
    assert not torch.equal(rows, other.train_rows(0.25))
    loader = dm.train_dataloader(fraction=0.25)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        got = [b for b in loader]
        index = torch.cat([b["index"] for b in got])
        assert sorted(index.tolist()) == rows.tolist()  # every epoch goes over the subset, and only it
        for b in got:  # `index` is the row in the whole training split
            assert torch.equal(b["input_ids"], dm.tensors["train"]["input_ids"][b["index"]])
        seen.append(index.tolist())
    assert seen[0] != seen[1]
    labels = dm.tensors["train"]["labels"][rows]
    assert dm.num_tokens("train", 0.25) == int((labels != -100).sum()) < dm.num_tokens("train")
    for bad in (0, -0.5, 1.5):
        with pytest.raises(DistillError, match="train_fraction must be in"):
            dm.train_rows(bad)


def test_configs_compose_and_instantiate(tmp_path: Path) -> None:
    for option in ("stdlib", "text", "jsonl", "hf"):
        cfg = compose_config([f"lm_data={option}", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"], "lm")
        node = cfg.lm_data
        assert node._target_ == "distill.llm.data.TextDataModule" and node.source == option
        assert OmegaConf.is_missing(node, "paths") == (option != "stdlib")
        if option == "stdlib":
            dm = hydra.utils.instantiate(node)
            assert (dm.seq_len, dm.requested_vocab_size, dm.mode) == (64, 1024, "pack")
            assert dm.max_chars == 2_000_000 and dm.seed == cfg.seed and dm.cache_dir == tmp_path / "data" / "lm"
    cfg = compose_config([
        "lm_data=text", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}", "lm_data.paths=[a.txt,b.txt]"
    ], "lm")  # fmt: skip
    assert hydra.utils.instantiate(cfg.lm_data).paths == ["a.txt", "b.txt"]  # a ListConfig becomes a list
    # The default students learn from a tenth of the training split and keep their best epoch; the teacher, all of it.
    cfg = compose_config([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"], "lm")
    assert cfg.lm_student.fit.train_fraction == 0.1 and cfg.lm_student.fit.restore_best is True
    assert cfg.lm_teacher.fit.get("train_fraction") is None and cfg.lm_teacher.fit.restore_best is True


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(source="web"), "unknown text source 'web'"),
        (dict(mode="stream"), "unknown mode 'stream'"),
        (dict(source="text"), "source=text needs paths"),
        (dict(source="jsonl", paths=["x.jsonl"], prompt_field="p"), "prompt_field and completion_field go together"),
        (dict(source="hf", paths=["x.json"], hf_format="imdb"), "hf_format must be one of json, csv, parquet, text"),
        (dict(seq_len=1), "seq_len must be >= 2"),
        (dict(val_fraction=0.6, test_fraction=0.5), r"val_fraction \+ test_fraction must be < 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(DistillError, match=message):
        TextDataModule(**kwargs)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    def refused(message: str, **kwargs) -> None:
        with pytest.raises(DistillError, match=message):
            tiny(tmp_path, **kwargs).setup()

    refused("text data file not found: .*missing.txt", paths=[str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_text("")
    refused("text data file is empty: .*empty.txt", paths=[str(tmp_path / "empty.txt")])
    (tmp_path / "blank.txt").write_text("  \n\n")
    refused("blank.txt: file is empty", paths=[str(tmp_path / "blank.txt")])

    good = json.dumps({"text": "fine"})
    for name, lines, message in [
        ("list.jsonl", [good, "[1, 2]"], r"list.jsonl, line 2: expected a JSON object, got list"),
        (
            "field.jsonl",
            [good, "", json.dumps({"body": "x"})],
            r"field.jsonl, line 3: no field 'text' \(fields: body\)",
        ),
        ("broken.jsonl", ["{not json"], r"broken.jsonl, line 1: not valid JSON"),
        ("number.jsonl", [json.dumps({"text": 3})], r"number.jsonl, line 1: field 'text' must be a string"),
    ]:
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        refused(message, source="jsonl", paths=[str(tmp_path / name)])
    refused(r"hub dataset names are not supported", source="hf", hf_format="json", paths=["someone/some_dataset"])
    (tmp_path / "rows.json").write_text(json.dumps({"body": "x"}) + "\n")
    refused(r"no column 'text' \(columns: body\)", source="hf", hf_format="json", paths=[str(tmp_path / "rows.json")])

    paths = write_texts(tmp_path / "docs", [200, 200, 200, 200])
    refused(r"split 'train' is empty: \d+ tokens, and one sequence needs seq_len=512", paths=paths, seq_len=512)
    refused(
        r"tokenizer directory not found: .*no_such_tokenizer",
        paths=paths,
        tokenizer=str(tmp_path / "no_such_tokenizer"),
    )
    refused(r"vocab_size must be >= 258", paths=paths, vocab_size=100)
    write_pairs(tmp_path / "two.jsonl", 2)
    refused(r"2 prompt/completion pairs are too few", source="jsonl", paths=str(tmp_path / "two.jsonl"),
            prompt_field="prompt", completion_field="completion")  # fmt: skip
