"""Text data for causal-LM distillation: documents -> tokenizer -> fixed-length token tensors in memory.

`TextDataModule` reads documents from one of five sources, splits them into train/val/test,
tokenizes them and holds each split as `[N, L]` LongTensors (`input_ids`, `attention_mask`, `labels`,
and `position_ids` in mode `pack_documents`). Nothing is downloaded: every file, tokenizer and dataset
is local, or generated.

Sources (`source`):
  * `stdlib`: the default corpus, needing no network: the `.py` files of Python's own standard
    library (skipping `test`/`tests`/`idlelib`/`site-packages`), sorted by relative path and cut at
    `max_chars`; each file goes to one split, chosen by a hash of its relative path.
  * `text`: local text files (`paths`), one document each.
  * `jsonl`: JSON-lines files, one object a line: `text_field` holds a document, or
    `prompt_field` + `completion_field` hold an instruction pair.
  * `hf`: local files read with Hugging Face `datasets.load_dataset(hf_format, data_files=paths)`
    (`hf_format` json, csv, parquet or text), then fields as for `jsonl`. Never a hub name.
  * `arithmetic`: a checkable task generated from `seed` (`distill.llm.data.arithmetic`):
    `num_examples` distinct questions "What is 47 + 38?" with answers "85", operands of `digits`
    [min, max] digits, `operations` of + - *; prompt/completion pairs.

A folder in `paths` stands for the files under it, sorted by relative path (hidden ones left out):
every file for `text`, `*.jsonl` and `*.json` for `jsonl`, the format's suffixes for `hf`.

Documents (text/jsonl/hf) are split by document when there are at least 3 (a seeded shuffle gives
each split round(n * fraction) documents, at least one), else by character ranges (the last
`val_fraction` and `test_fraction` of the text). Prompt/completion pairs and conversations are always
split by example.

Chat (`chat: true`, sources jsonl, hf and arithmetic; `distill.llm.data.chat`): every example is a
conversation rendered with a chat template (`chat_template`: a Jinja string, or null for the
tokenizer's own; the trained BPE has none, so it needs one). A row holds a list of messages
(`messages_field`: `[{"role": "system"|"user"|"assistant", "content": "..."}, ...]`), or a TRL
conversational prompt-completion pair (`prompt_field`/`completion_field` holding lists of messages:
the completion's assistant turns are learned), or a prompt/completion string pair (a user message and
the assistant's answer). Only the assistant messages' content and the template's end-of-turn text
after it carry labels; everything else is -100. Roles system, user and assistant are always allowed,
other roles only where the template's source names them. A conversation without an assistant
message, a message without role/content strings, a role the template does not name and any error the
template raises are refused while the data are read, in one line naming the file and line (or row).

Modes (`mode`):
  * `pack`: every document's tokens followed by eos, concatenated per split and cut into blocks of
    exactly `seq_len` tokens (the remainder is dropped); attention_mask all ones, labels = input_ids.
  * `pad`: one example per document, truncated to `seq_len`, right-padded with the pad id;
    attention_mask and labels (-100) mask the padding.
  * `pack_documents`: whole documents (or pairs, or conversations) packed best-fit into rows of
    `seq_len` tokens, never split across rows (a longer one is cut to seq_len, with a warning counting
    them); the rest of a row is padding (label -100, attention_mask 0). `position_ids` restart at 0 at
    each document and at the padding: the LM module then gives the model position ids and no mask, and
    transformers keeps attention within each document. Each document's first label is -100. Prompts
    for generation come from the unpacked documents. Not with on-policy or sequence-level batches, nor
    with an ONNX stage (both refused when the config is checked).
  In modes `pack` and `pad`, prompt/completion pairs are one padded example each: prompt + completion +
  eos, with the prompt's labels -100, so only the completion is learned; conversations are one padded
  example each too, labelled on their assistant turns.

Labels are NOT shifted: the model shifts (logits[:, :-1] predict labels[:, 1:]); -100 marks a
position that no loss counts.

Tokenizer (`tokenizer`): `bpe` trains a byte-level BPE (`vocab_size`, special tokens `<|pad|>` and
`<|endoftext|>`) on the training split only and caches it in `cache_dir`; with chat data it learns
from the rendered conversations, the template's `<|...|>` markers become special tokens, and the
template travels with it (`chat_template`, written by `save_pretrained`); `split_digits: true` makes
every digit its own token. Any other value is a local directory holding a pretrained tokenizer
(`save_pretrained`), loaded with `local_files_only=True`. The BPE's cache key covers the chat
settings and template, and `fingerprint()` covers the template.

The package, by family: `sources` (reading the sources, the stdlib corpus, conversations from rows,
splitting), `arithmetic` (the generated task), `chat` (rendering conversations, the spans learned),
`tokenizer` (the BPE or pretrained tokenizer and its cache key), `tensors` (packing and padding
into tensors), `batches` (`SequenceBatches`) and `module` (`TextDataModule`). Every public name is
re-exported here.
"""

from distill.llm.data.arithmetic import OPERATIONS, arithmetic_problems
from distill.llm.data.batches import SequenceBatches
from distill.llm.data.chat import KNOWN_ROLES, ChatTemplate, span_labels
from distill.llm.data.module import TextDataModule
from distill.llm.data.sources import (
    FOLDER_SUFFIXES,
    HF_FORMATS,
    SOURCES,
    SPLITS,
    STDLIB_MAX_FILE_CHARS,
    STDLIB_SKIP,
    Conversation,
    Document,
    Pair,
)
from distill.llm.data.tensors import IGNORE_INDEX, MODES
from distill.llm.data.tokenizer import EOS_TOKEN, PAD_TOKEN

__all__ = [
    "EOS_TOKEN",
    "FOLDER_SUFFIXES",
    "HF_FORMATS",
    "IGNORE_INDEX",
    "KNOWN_ROLES",
    "MODES",
    "OPERATIONS",
    "PAD_TOKEN",
    "SOURCES",
    "SPLITS",
    "STDLIB_MAX_FILE_CHARS",
    "STDLIB_SKIP",
    "ChatTemplate",
    "Conversation",
    "Document",
    "Pair",
    "SequenceBatches",
    "TextDataModule",
    "arithmetic_problems",
    "span_labels",
]
