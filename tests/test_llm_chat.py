"""Chat data for distill-lm: conversations rendered with a chat template and learned on the assistant turns,
TRL prompt-completion rows, whole documents packed apart (position ids), the generated arithmetic task,
generation prompts, and bad conversations refused in one line while the data are read."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import hydra
import pytest
import torch

pytest.importorskip("transformers")

from tests.conftest import compose_config, run_cli  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.llm.data import (  # noqa: E402
    IGNORE_INDEX,
    Document,
    SequenceBatches,
    TextDataModule,
    arithmetic_problems,
    span_labels,
)
from distill.llm.module import model_inputs  # noqa: E402
from distill.validate import check_lm_config  # noqa: E402

SPECIAL = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
# ChatML: every message ends with <|im_end|> and a newline (raw strings: Jinja reads the '\n' escapes).
CHATML = (
    r"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# As configs/lm_data/arithmetic.yaml: the assistant's turn ends with the eos token, the others with <|im_end|>.
EOS_CHATML = (
    r"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    r"{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


TWO_TURNS = [msg("user", "Hi there"), msg("assistant", "Hello friend")]
MULTI_TURN = [
    msg("system", "Be brief."),
    msg("user", "What is red?"),
    msg("assistant", "A colour."),
    msg("user", "And blue?"),
    msg("assistant", "Also a colour!"),
]
FILLERS = [[msg("user", f"Say {w}"), msg("assistant", f"{w} {w}")] for w in ("one", "two", "three", "four")]
PIECE = re.compile(r"\w+|[^\w]")  # the word tokenizer's pieces: words, and every other character alone


def word_tokenizer(folder: Path, texts: list[str], chat_template: str | None = CHATML) -> str:
    """A local tokenizer whose tokens are the words and single characters of `texts`, and SPECIAL: every token
    list below is written out by hand."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = sorted({p for t in texts + ["user assistant system\n"] for p in PIECE.findall(t)})
    vocab = {token: i for i, token in enumerate(SPECIAL + ["[UNK]"] + pieces)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE.pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def all_texts(conversations: list[list[dict]]) -> list[str]:
    return [m["content"] for c in conversations for m in c]


def chat_data(
    tmp_path: Path, conversations: list[list[dict]], template: str | None = CHATML, **kwargs
) -> TextDataModule:
    rows = [{"messages": c} for c in conversations]
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = dict(source="jsonl", paths=write_rows(tmp_path / "chats.jsonl", rows), messages_field="messages",
                    chat=True, tokenizer=word_tokenizer(tmp_path / "tok", all_texts(conversations), template),
                    seq_len=64, mode="pad", val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm = TextDataModule(**{**settings, **kwargs})
    dm.setup()
    return dm


def row_of(dm: TextDataModule, content: str) -> tuple[str, int]:
    """The split and row of the conversation holding a message with `content` (pad mode: a row each)."""
    for split, items in dm.documents.items():
        for i, item in enumerate(items):
            if any(m["content"] == content for m in item.messages):
                return split, i
    raise AssertionError(content)


def tokens(dm: TextDataModule, ids: torch.Tensor) -> list[str]:
    return dm.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def learned(dm: TextDataModule, split: str, i: int) -> list[str]:
    """The row's tokens up to its padding, those with a label shown and the others as '-'."""
    t = dm.tensors[split]
    real = int(t["attention_mask"][i].sum())
    labels = t["labels"][i, :real]
    assert torch.equal(labels[labels != IGNORE_INDEX], t["input_ids"][i, :real][labels != IGNORE_INDEX])
    return [
        tok if int(lab) != IGNORE_INDEX else "-"
        for tok, lab in zip(tokens(dm, t["input_ids"][i, :real]), labels, strict=True)
    ]


# -- rendering and labels ------------------------------------------------------------------------------


def test_two_turn_and_multi_turn_conversations_learn_the_assistant_only(tmp_path: Path) -> None:
    dm = chat_data(tmp_path, [TWO_TURNS, MULTI_TURN, *FILLERS])
    split, i = row_of(dm, "Hello friend")
    t = dm.tensors[split]
    assert tokens(dm, t["input_ids"][i, : int(t["attention_mask"][i].sum())]) == [
        "<|im_start|>", "user", "\n", "Hi", " ", "there", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n", "Hello", " ", "friend", "<|im_end|>", "\n",
    ]  # fmt: skip
    # the content and the end-of-turn marker after it; not the newline that follows it
    assert learned(dm, split, i) == ["-"] * 11 + ["Hello", " ", "friend", "<|im_end|>", "-"]
    assert bool((t["input_ids"][i, 16:] == dm.pad_token_id).all()) and bool((t["labels"][i, 16:] == -100).all())

    split, i = row_of(dm, "Also a colour!")
    assert learned(dm, split, i) == (
        ["-"] * 8  # <|im_start|> system \n Be _ brief . <|im_end|>
        + ["-"] * 11  # \n <|im_start|> user \n What _ is _ red ? <|im_end|>
        + ["-"] * 3  # \n <|im_start|> assistant
        + ["-", "A", " ", "colour", ".", "<|im_end|>"]
        + ["-"] * 10  # \n <|im_start|> user \n And _ blue ? <|im_end|> \n
        + ["-"] * 3  # <|im_start|> assistant \n
        + ["Also", " ", "a", " ", "colour", "!", "<|im_end|>", "-"]
    )
    conversation = dm.documents[split][i]
    assert conversation.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is red?<|im_end|>\n"
        "<|im_start|>assistant\nA colour.<|im_end|>\n<|im_start|>user\nAnd blue?<|im_end|>\n"
        "<|im_start|>assistant\nAlso a colour!<|im_end|>\n"
    )
    assert [conversation.text[a:b] for a, b in conversation.spans] == [
        "A colour.<|im_end|>",
        "Also a colour!<|im_end|>",
    ]
    assert dm.num_tokens(split) == int((dm.tensors[split]["labels"] != IGNORE_INDEX).sum())


def test_an_assistant_turn_ended_by_eos_learns_the_eos(tmp_path: Path) -> None:
    dm = chat_data(tmp_path, [TWO_TURNS, MULTI_TURN, *FILLERS], template=EOS_CHATML)
    split, i = row_of(dm, "Hello friend")
    assert learned(dm, split, i) == [
        "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",  # <|im_start|> user \n Hi _ there <|im_end|> \n <|im_start|> assistant \n
        "Hello", " ", "friend", "<eos>",
    ]  # fmt: skip
    split, i = row_of(dm, "Also a colour!")
    assert [tok for tok in learned(dm, split, i) if tok != "-"] == ["A", " ", "colour", ".", "<eos>"] + [
        "Also",
        " ",
        "a",
        " ",
        "colour",
        "!",
        "<eos>",
    ]


def test_trl_prompt_completion_rows_and_string_pairs(tmp_path: Path) -> None:
    few_shot = [msg("user", "Say one"), msg("assistant", "one one"), msg("user", "Say two")]
    rows = [
        {"prompt": few_shot, "completion": [msg("assistant", "two two")]},  # conversational prompt-completion
        {"prompt": "Hi there", "completion": "Hello friend"},  # strings: a user message and the answer
        *({"prompt": f"Say {w}", "completion": f"{w} {w}"} for w in ("three", "four", "five")),
    ]
    texts = all_texts([few_shot]) + ["two two", "Hi there", "Hello friend", "Say three four five"]
    dm = TextDataModule(source="jsonl", paths=write_rows(tmp_path / "rows.jsonl", rows), prompt_field="prompt",
                        completion_field="completion", chat=True, tokenizer=word_tokenizer(tmp_path / "tok", texts),
                        seq_len=40, mode="pad", val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    dm.setup()
    split, i = row_of(dm, "two two")
    conversation = dm.documents[split][i]
    assert conversation.messages == few_shot + [msg("assistant", "two two")] and conversation.learn_from == 3
    # the prompt's own assistant turn ("one one") is context: only the completion is learned
    assert [tok for tok in learned(dm, split, i) if tok != "-"] == ["two", " ", "two", "<|im_end|>"]
    split, i = row_of(dm, "Hello friend")
    assert dm.documents[split][i].messages == TWO_TURNS
    assert learned(dm, split, i) == ["-"] * 11 + ["Hello", " ", "friend", "<|im_end|>", "-"]


def test_span_labels_follow_character_offsets() -> None:
    ids = [10, 11, 12, 13, 14]
    offsets = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 12)]
    assert span_labels(ids, offsets, [(4, 5)]) == [-100, 11, -100, -100, -100]  # overlapping a token's end
    assert span_labels(ids, offsets, [(5, 9), (12, 12)]) == [-100, -100, 12, 13, -100]  # zero-width token at 5
    assert span_labels(ids, offsets, [(0, 1), (9, 12)]) == [10, -100, -100, -100, 14]


# -- document-separated packing ------------------------------------------------------------------------


def test_pack_documents_packs_whole_documents_best_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = ["a b c", "a", "a b", "a b c d e f", "b."]  # tokens with eos: 6, 2, 4, 12 (cut to 8), 3
    rows = [{"text": d} for d in docs]
    dm = TextDataModule(source="jsonl", paths=write_rows(tmp_path / "docs.jsonl", rows), mode="pack_documents",
                        tokenizer=word_tokenizer(tmp_path / "tok", docs, None), seq_len=8, val_fraction=0.2,
                        test_fraction=0.2)  # fmt: skip
    dm.setup()
    with caplog.at_level(logging.WARNING, logger="distill.llm.data"):
        t = dm._build_documents("train", [Document(d) for d in docs])
    assert "train: 1 of 5 documents are longer than seq_len=8: each is cut to its first 8 tokens" in caplog.text
    assert [tokens(dm, row) for row in t["input_ids"]] == [
        ["a", " ", "b", " ", "c", "<eos>", "a", "<eos>"],  # 6, then the 2-token one fills the room left exactly
        ["a", " ", "b", "<eos>", "b", ".", "<eos>", "<pad>"],  # 4, then the 3-token one: the best fit
        ["a", " ", "b", " ", "c", " ", "d", " "],  # 12 tokens, cut to 8 (no eos: it was cut)
    ]
    assert t["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 0, 1],
        [0, 1, 2, 3, 0, 1, 2, 0],  # the padding restarts too
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert t["attention_mask"].tolist() == [[1] * 8, [1] * 7 + [0], [1] * 8]
    # every document's first label is -100 (the token before it is another document's); padding -100
    expected = t["input_ids"].clone()
    expected[t["position_ids"] == 0] = IGNORE_INDEX
    expected[t["attention_mask"] == 0] = IGNORE_INDEX
    assert torch.equal(t["labels"], expected)


def test_packed_conversations_keep_their_labels_and_positions(tmp_path: Path) -> None:
    conversations = [TWO_TURNS, MULTI_TURN, *FILLERS] + [[msg("user", "Say one"), msg("assistant", "one")]] * 4
    dm = chat_data(tmp_path, conversations, mode="pack_documents", seq_len=64)
    plain = chat_data(tmp_path / "pad", conversations, seq_len=64)
    t = dm.tensors["train"]
    assert set(t) == {"input_ids", "attention_mask", "labels", "position_ids"} and t["input_ids"].shape[1] == 64
    # each conversation appears whole in one row, starting at position 0, with the labels it has unpacked
    for split in ("train", "val", "test"):
        t = dm.tensors[split]
        starts = int((t["position_ids"] == 0).sum()) - int((t["attention_mask"] == 0).any(1).sum())  # less padding
        assert starts == len(dm.documents[split])
        for conversation in dm.documents[split]:
            ids, labels = dm._chat_units([conversation])[0]
            found = 0
            for r in range(len(t["input_ids"])):
                for start in (t["position_ids"][r] == 0).nonzero().flatten().tolist():
                    if t["input_ids"][r, start : start + len(ids)].tolist() == ids:
                        found += 1
                        assert t["position_ids"][r, start : start + len(ids)].tolist() == list(range(len(ids)))
                        assert t["labels"][r, start : start + len(ids)].tolist() == [IGNORE_INDEX] + labels[1:]
            assert found >= 1, conversation.messages
        # the same learned tokens as one conversation a row (their first tokens are never learned)
        assert dm.num_tokens(split) == plain.num_tokens(split)
    assert dm.num_sequences("train") < len(dm.documents["train"])  # several conversations a row
    t = dm.tensors["train"]
    batch = next(iter(SequenceBatches(t, 2)))
    assert torch.equal(batch["position_ids"], t["position_ids"][batch["index"]])
    assert set(model_inputs(batch)) == {"input_ids", "position_ids"}


def test_a_packed_row_gives_each_document_the_logits_it_has_alone(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    docs = ["a b c", "a", "a b", "b.", "c b a"]
    dm = TextDataModule(source="jsonl", paths=write_rows(tmp_path / "docs.jsonl", [{"text": d} for d in docs]),
                        mode="pack_documents", tokenizer=word_tokenizer(tmp_path / "tok", docs, None), seq_len=16,
                        val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    dm.setup()
    t = dm._build_documents("train", [Document(d) for d in docs])
    row, positions = t["input_ids"][:1], t["position_ids"][:1]
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 2, 3, 0, 1, 2, 0]  # 6 + 2 + 4 + 3 + padding
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=dm.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        packed = model(**model_inputs({"input_ids": row, "position_ids": positions}), use_cache=False).logits[0]
        causal = model(input_ids=row, use_cache=False).logits[0]  # one causal sequence: documents see each other
        starts = (positions[0] == 0).nonzero().flatten().tolist() + [16]
        for a, b in zip(starts[:-2], starts[1:-1], strict=True):  # every document (the padding left out)
            alone = model(input_ids=row[:, a:b], use_cache=False).logits[0]
            torch.testing.assert_close(packed[a:b], alone, rtol=1e-5, atol=1e-5)
            if a > 0:
                assert not torch.allclose(causal[a:b], alone, atol=1e-3)


def test_packed_prompt_completion_pairs_learn_their_completions(tmp_path: Path) -> None:
    rows = [{"prompt": f"Say {w}", "completion": f" {w}."} for w in ("a", "b", "c", "d", "e")]
    dm = TextDataModule(source="jsonl", paths=write_rows(tmp_path / "pairs.jsonl", rows), prompt_field="prompt",
                        completion_field="completion", mode="pack_documents", seq_len=16, val_fraction=0.2,
                        test_fraction=0.2, tokenizer=word_tokenizer(tmp_path / "tok", ["Say a b c d e ."], None))  # fmt: skip
    dm.setup()
    t = dm.tensors["train"]  # 3 pairs of 7 tokens (Say _ w _ w . eos): two a row, then one
    letters = [p.prompt[-1] for p in dm.documents["train"]]
    assert t["input_ids"].shape == (2, 16) and t["position_ids"][0].tolist() == list(range(7)) * 2 + [0, 1]
    assert t["position_ids"][1].tolist() == list(range(7)) + list(range(9))
    for r, k, start in ((0, 0, 0), (0, 1, 7), (1, 2, 0)):
        w = letters[k]
        assert tokens(dm, t["input_ids"][r, start : start + 7]) == ["Say", " ", w, " ", w, ".", "<eos>"]
        labels = t["labels"][r, start : start + 7]
        assert tokens(dm, labels[labels != IGNORE_INDEX]) == [" ", w, ".", "<eos>"]  # the completion and eos
    assert dm.prompt_lengths == {}  # prompts come from the pairs themselves
    ids, mask, references = dm.generation_examples("train")
    assert references == [f" {w}." for w in letters]
    assert dm.decode(ids) == [f"Say {w}" for w in letters]


# -- generation prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pad", "pack_documents"])
def test_generation_examples_end_at_the_last_assistant_message(tmp_path: Path, mode: str) -> None:
    conversations = [TWO_TURNS, MULTI_TURN, *FILLERS]
    dm = chat_data(tmp_path, conversations, mode=mode, seq_len=64)
    items, prompts, references = [], [], []
    for split in ("train", "val", "test"):
        ids, mask, refs = dm.generation_examples(split)
        assert len(refs) == ids.shape[0] == len(dm.documents[split])
        assert bool((mask[:, -1] == 1).all())  # left-padded
        items += dm.documents[split]
        prompts += dm.decode([row[m.bool()] for row, m in zip(ids, mask, strict=True)])
        references += refs
    assert references == [c.messages[-1]["content"] for c in items] and len(items) == 6
    k = [c.messages for c in items].index(MULTI_TURN)
    assert prompts[k] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is red?<|im_end|>\n"
        "<|im_start|>assistant\nA colour.<|im_end|>\n<|im_start|>user\nAnd blue?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert references[k] == "Also a colour!"
    k = [c.messages for c in items].index(TWO_TURNS)
    assert prompts[k] == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    short, short_mask = dm.prompts("train", 2, prompt_len=3)
    assert short.shape == (2, 3) and tokens(dm, short[0]) == ["<|im_start|>", "assistant", "\n"]


def test_pack_documents_prompts_of_plain_text_come_from_the_documents(tmp_path: Path) -> None:
    docs = ["a b c", "a", "a b", "b.", "c b a"]
    dm = TextDataModule(source="jsonl", paths=write_rows(tmp_path / "docs.jsonl", [{"text": d} for d in docs]),
                        mode="pack_documents", tokenizer=word_tokenizer(tmp_path / "tok", docs, None), seq_len=16,
                        val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    ids, mask = dm.prompts("train", 3, prompt_len=2)
    expected = [dm.tokenizer(d.text)["input_ids"][:2] for d in dm.documents["train"][:3]]
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)] == expected
    with pytest.raises(DistillError, match="evaluation by generation needs prompts with reference answers"):
        dm.generation_examples("test")


# -- the BPE learns the rendered conversations -------------------------------------------------------------


def test_bpe_learns_rendered_chat_and_its_key_and_fingerprint_follow_the_template(tmp_path: Path) -> None:
    rows = [{"messages": c} for c in [TWO_TURNS, MULTI_TURN, *FILLERS]]
    path = write_rows(tmp_path / "chats.jsonl", rows)
    settings = dict(source="jsonl", paths=path, messages_field="messages", chat=True, vocab_size=300, seq_len=64,
                    mode="pad", val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm = TextDataModule(**settings, chat_template=CHATML)
    dm.setup()
    tokenizer = dm.tokenizer
    for marker in ("<|im_start|>", "<|im_end|>"):  # the template's markers are single special tokens
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.chat_template == CHATML  # saved with it (the exported student's folder)
    split, i = row_of(dm, "Hello friend")
    labels = dm.tensors[split]["labels"][i]
    assert dm.decode(labels) == "Hello friend<|im_end|>"
    # written with the tokenizer, the template renders as the data did, through transformers' own API
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved", local_files_only=True)
    conversation = dm.documents[split][i]
    assert loaded.apply_chat_template(conversation.messages, tokenize=False) == conversation.text
    assert loaded.apply_chat_template(conversation.messages, tokenize=True, return_dict=False) == (
        dm.tensors[split]["input_ids"][i][dm.tensors[split]["attention_mask"][i].bool()].tolist()
    )
    # the BPE learned the rendered text: the role names are whole tokens
    assert tokenizer.convert_ids_to_tokens(tokenizer("assistant", add_special_tokens=False)["input_ids"]) == [
        "assistant"
    ]

    # the same training text under a template that differs only in its generation prompt: the same BPE and
    # tensors, another cache key and fingerprint (the prompts given for generation differ)
    other_prompt = CHATML.replace(
        r"'<|im_start|>assistant\n' }}{% endif %}", r"'<|im_start|>assistant\n\n' }}{% endif %}"
    )
    assert other_prompt != CHATML
    other = TextDataModule(**settings, chat_template=other_prompt)
    other.setup()
    assert other._cache_key() != dm._cache_key() and other.tokenizer_path != dm.tokenizer_path
    for split in ("train", "val", "test"):
        assert torch.equal(other.tensors[split]["input_ids"], dm.tensors[split]["input_ids"])
    assert other.fingerprint() != dm.fingerprint()
    again = TextDataModule(**settings, chat_template=CHATML)
    assert again.fingerprint() == dm.fingerprint() and again.tokenizer_path == dm.tokenizer_path


# -- the arithmetic task -----------------------------------------------------------------------------------


def test_arithmetic_problems_are_seeded_distinct_and_correct() -> None:
    first = arithmetic_problems(500, (1, 2), ("+", "-"), seed=3)
    assert first == arithmetic_problems(500, (1, 2), ("+", "-"), seed=3)
    assert first != arithmetic_problems(500, (1, 2), ("+", "-"), seed=4)
    assert len(set(first)) == 500
    ops = set()
    for question, answer in first:
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question).groups()
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        ops.add(op)
    assert ops == {"+", "-"}
    assert arithmetic_problems(3, (3, 3), ("*",), seed=0) == [
        (q, str(int(q.split()[2]) * int(q.split()[4][:-1]))) for q, _ in arithmetic_problems(3, (3, 3), ("*",), seed=0)
    ]
    assert all(100 <= int(q.split()[2]) <= 999 for q, _ in arithmetic_problems(50, (3, 3), ("*",), seed=0))
    assert len(arithmetic_problems(200, (1, 1), ("+", "-"), seed=0)) == 200  # 2 x 10 x 10: every problem
    for kwargs, message in [
        (dict(num_examples=201, digits=(1, 1), operations=("+", "-")), "more than the 200 distinct problems"),
        (dict(num_examples=10, digits=(2, 1), operations=("+",)), r"digits must be \[min, max\]"),
        (dict(num_examples=10, digits=(1, 2), operations=("/",)), "operations must be distinct ones of"),
        (dict(num_examples=2, digits=(1, 2), operations=("+",)), "num_examples must be an integer >= 3"),
    ]:
        with pytest.raises(DistillError, match=message):
            arithmetic_problems(seed=0, **kwargs)


def test_arithmetic_source_as_chat_with_its_config(tmp_path: Path) -> None:
    cfg = compose_config(["lm_data=arithmetic", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}",
                          "lm_data.num_examples=300", "lm_data.val_fraction=0.1", "lm_data.test_fraction=0.1"],
                         "lm")  # fmt: skip
    dm = hydra.utils.instantiate(cfg.lm_data)
    assert (dm.chat, dm.mode, dm.seq_len, dm.split_digits, dm.digits, dm.operations) == (
        True, "pad", 32, True, (1, 2), ("+", "-"),
    )  # fmt: skip
    dm.setup()
    assert [dm.num_sequences(s) for s in ("train", "val", "test")] == [240, 30, 30]
    questions = {s: {c.messages[0]["content"] for c in dm.documents[s]} for s in ("train", "val", "test")}
    assert not (questions["train"] & questions["test"] or questions["train"] & questions["val"])
    conversation = dm.documents["test"][0]
    question, answer = conversation.messages[0]["content"], conversation.messages[1]["content"]
    assert conversation.text == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|endoftext|>"
    assert dm.decode(dm.tensors["test"]["labels"][0]) == answer + "<|endoftext|>"
    digits = [t for t in dm.tokenizer.convert_ids_to_tokens(dm.tensors["test"]["input_ids"][0]) if t.isdigit()]
    assert digits == list(re.sub(r"\D", "", question + answer))  # every digit its own token
    ids, mask, references = dm.generation_examples("test", 4)
    assert references == [c.messages[1]["content"] for c in dm.documents["test"][:4]]
    assert dm.decode(ids[0][mask[0].bool()]) == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(DistillError, match="source=arithmetic generates its examples"):
        TextDataModule(source="arithmetic", paths=["x.jsonl"])


# -- bad input -----------------------------------------------------------------------------------------------


def refused(tmp_path: Path, rows: list, message: str, template: str = CHATML, **kwargs) -> None:
    path = write_rows(tmp_path / "bad.jsonl", rows + [GOOD] * 3)  # enough conversations to split
    texts = [json.dumps(r) for r in rows + [GOOD]]
    settings = dict(source="jsonl", paths=path, messages_field="messages", chat=True, seq_len=32,
                    tokenizer=word_tokenizer(tmp_path / "tok", texts, template), cache_dir=str(tmp_path / "c"))  # fmt: skip
    with pytest.raises(DistillError) as err:
        TextDataModule(**{**settings, **kwargs}).setup()
    assert str(err.value) == message.format(path=path)
    assert "\n" not in str(err.value)


GOOD = {"messages": TWO_TURNS}


@pytest.mark.parametrize(
    "rows,message",
    [
        ([GOOD, {"messages": [msg("user", "Hi")]}],
         "{path}, line 2: no assistant message: a conversation needs one to learn from"),
        ([GOOD, GOOD, {"messages": [msg("user", "Hi"), {"role": "assistant"}]}],
         "{path}, line 3: message 2 needs a 'content' string, got none"),
        ([{"messages": [{"role": 3, "content": "x"}]}], "{path}, line 1: message 1 needs a 'role' string, got int"),
        ([{"messages": [msg("user", "Hi"), ["assistant", "x"]]}],
         "{path}, line 1: message 2 must be an object with 'role' and 'content' strings, got list"),
        ([{"messages": "Hi"}], "{path}, line 1: field 'messages' must be a non-empty list of messages, got str"),
        ([{"messages": []}], "{path}, line 1: field 'messages' must be a non-empty list of messages, got an empty list"),
        ([{"text": "Hi"}], "{path}, line 1: no field 'messages' (fields: text)"),
        ([GOOD, {"messages": [msg("user", "Hi"), msg("tool", "42"), msg("assistant", "ok")]}],
         "{path}, line 2: message 2 has role 'tool', which the chat template does not name (system, user and "
         "assistant are always allowed, other roles where the template's source names them)"),
    ],
)  # fmt: skip
def test_bad_conversations_are_refused_in_one_line(tmp_path: Path, rows: list, message: str) -> None:
    refused(tmp_path, rows, message)


def test_template_errors_are_refused_in_one_line(tmp_path: Path) -> None:
    no_system = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported,\nsorry') }}"
        "{% endif %}" + CHATML
    )
    system = {"messages": [msg("system", "Be brief."), *TWO_TURNS]}
    refused(tmp_path, [GOOD, GOOD, system], "{path}, line 3: the chat template refused the conversation: "
            "System role not supported, sorry", template=no_system)  # fmt: skip
    drops_system = CHATML.replace(
        "{% for message in messages %}", "{% for message in messages if message['role'] != 'system' %}"
    )
    refused(tmp_path, [system], "{path}, line 1: message 1 (system): the chat template leaves its content out of the "
            "rendered text", template=drops_system)  # fmt: skip
    with pytest.raises(DistillError) as err:
        TextDataModule(source="jsonl", paths=write_rows(tmp_path / "ok.jsonl", [GOOD] * 3), messages_field="messages",
                       chat=True, chat_template="{% for m in messages %}{{ m }}").setup()  # fmt: skip
    message = str(err.value)
    assert (
        message.startswith("the chat template is not valid Jinja: Unexpected end of template.") and "\n" not in message
    )
    assert message.endswith("(template line 1); check lm_data.chat_template")
    refused(tmp_path, [GOOD], "{path}, line 1: the chat template refused the conversation: 'dict object' has no "
            "attribute 'missing'", template="{{ messages[0].missing.x }}")  # fmt: skip
    rewrites = CHATML.replace("message['content']", "message['content'] | upper")
    refused(tmp_path, [GOOD], "{path}, line 1: message 1 (user): the chat template leaves its content out of the "
            "rendered text", template=rewrites)  # fmt: skip
    # a role the template names is allowed
    with_tool = CHATML.replace(
        "{% for message in messages %}", "{% for message in messages %}{% if message['role'] == 'tool' %}{% endif %}"
    )
    tool = {"messages": [msg("user", "Hi"), msg("tool", "42"), msg("assistant", "ok")]}
    path = write_rows(tmp_path / "tool.jsonl", [tool, tool, tool])
    dm = TextDataModule(source="jsonl", paths=path, messages_field="messages", chat=True, seq_len=32,
                        tokenizer=word_tokenizer(tmp_path / "tool_tok", ["Hi 42 ok tool"], with_tool))  # fmt: skip
    dm.setup()
    assert dm.decode(dm.tensors["train"]["labels"][0]) == "ok<|im_end|>"


def test_missing_templates_and_settings_are_refused(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chats.jsonl", [GOOD] * 3)
    folder = word_tokenizer(tmp_path / "tok", all_texts([TWO_TURNS]), None)
    with pytest.raises(DistillError) as err:
        TextDataModule(source="jsonl", paths=path, messages_field="messages", chat=True, tokenizer=folder).setup()
    assert str(err.value) == (
        f"lm_data.chat=true but tokenizer '{folder}' has no chat template: set lm_data.chat_template to a Jinja "
        "template (configs/lm_data/chat.yaml has one)"
    )
    for kwargs, message in [
        (dict(chat=True), "chat=true with tokenizer bpe: the trained BPE has no chat template of its own; set "
         "lm_data.chat_template"),
        (dict(chat=False), "messages_field=messages holds conversations, which need the chat template: set chat=true"),
        (dict(chat=True, chat_template=CHATML, prompt_field="p", completion_field="c"),
         "set messages_field .* or prompt_field/completion_field, not both"),
        (dict(chat="yes", chat_template=CHATML), "chat must be true or false, got 'yes'"),
        (dict(chat=True, chat_template=CHATML, source="text"), "chat data need source jsonl, hf or arithmetic"),
        (dict(chat=True, chat_template=CHATML, messages_field=None), "chat=true needs conversations"),
        (dict(chat=False, messages_field=None, chat_template=CHATML), "chat_template is set but chat is false"),
        (dict(chat=True, chat_template=CHATML, split_digits=True, tokenizer=folder), "split_digits applies to the"),
    ]:  # fmt: skip
        settings = {"source": "jsonl", "paths": path, "messages_field": "messages", **kwargs}
        with pytest.raises(DistillError, match=message):
            TextDataModule(**settings)


def test_hf_rows_of_messages_and_their_errors(tmp_path: Path) -> None:
    rows = [{"messages": c, "id": i} for i, c in enumerate([TWO_TURNS, MULTI_TURN, *FILLERS])]
    path = write_rows(tmp_path / "chats.json", rows)
    dm = TextDataModule(source="hf", hf_format="json", paths=path, messages_field="messages", chat=True, seq_len=48,
                        tokenizer=word_tokenizer(tmp_path / "tok", all_texts([TWO_TURNS, MULTI_TURN, *FILLERS])),
                        val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm.setup()
    split, i = row_of(dm, "Hello friend")
    assert learned(dm, split, i) == ["-"] * 11 + ["Hello", " ", "friend", "<|im_end|>", "-"]
    bad = write_rows(tmp_path / "bad.json", [{"messages": TWO_TURNS}, {"messages": [msg("user", "Hi")]}])
    with pytest.raises(DistillError) as err:
        TextDataModule(source="hf", hf_format="json", paths=bad, messages_field="messages", chat=True,
                       tokenizer=dm.tokenizer_name, cache_dir=str(tmp_path / "cache")).setup()  # fmt: skip
    assert str(err.value) == f"{bad}, row 2: no assistant message: a conversation needs one to learn from"


def test_pack_documents_refuses_generated_batches_minillm_and_onnx_at_config_check(tmp_path: Path) -> None:
    base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}", "lm_data=arithmetic",
            "lm_data.mode=pack_documents"]  # fmt: skip
    check_lm_config(compose_config(base, "lm"))  # packing alone is fine
    for extra, message in [
        ("on_policy_fraction=0.5", "on_policy_fraction=0.5 generates from each row's prompt, but "
         "lm_data.mode=pack_documents rows hold several documents: use lm_data.mode=pad"),
        ("sequence_kd_fraction=0.25", "sequence_kd_fraction=0.25 generates from each row's prompt"),
        ("compress=[onnx]", "compress stage 'onnx' runs the student on input_ids alone"),
        ("lm_distill=[minillm]", "lm_distill.minillm (MiniLLM) samples responses to each row's prompt"),
    ]:  # fmt: skip
        with pytest.raises(DistillError, match=re.escape(message)):
            check_lm_config(compose_config([*base, extra], "lm"))
    check_lm_config(compose_config([*base[:-1], "on_policy_fraction=0.5"], "lm"))  # pad mode: allowed


@pytest.mark.slow
def test_cli_refuses_a_bad_conversation_in_one_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chats.jsonl", [GOOD, GOOD, {"messages": [msg("user", "Hi")]}, GOOD])
    result = run_cli(["lm_data=chat", f"lm_data.paths=[{path}]", f"paths.root_dir={tmp_path}",
                      f"paths.output_dir={tmp_path}/run", "lm_data.vocab_size=280"], tmp_path,
                     module="distill.llm.train")  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line == f"error: {path}, line 3: no assistant message: a conversation needs one to learn from"
