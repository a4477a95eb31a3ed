"""Text data for causal-LM distillation: documents -> tokenizer -> fixed-length token tensors in memory.

`TextDataModule` reads documents from one of four local sources, splits them into train/val/test,
tokenizes them and holds each split as three `[N, L]` LongTensors (`input_ids`, `attention_mask`,
`labels`). Nothing is downloaded: every file, tokenizer and dataset is local.

Sources (`source`):
  * `stdlib`: the default corpus, needing no network: the `.py` files of Python's own standard
    library (skipping `test`/`tests`/`idlelib`/`site-packages`), sorted by relative path and cut at
    `max_chars`; each file goes to one split, chosen by a hash of its relative path.
  * `text`: local text files (`paths`), one document each.
  * `jsonl`: JSON-lines files, one object a line: `text_field` holds a document, or
    `prompt_field` + `completion_field` hold an instruction pair.
  * `hf`: local files read with Hugging Face `datasets.load_dataset(hf_format, data_files=paths)`
    (`hf_format` json, csv, parquet or text), then fields as for `jsonl`. Never a hub name.

A folder in `paths` stands for the files under it, sorted by relative path (hidden ones left out):
every file for `text`, `*.jsonl` and `*.json` for `jsonl`, the format's suffixes for `hf`.

Documents (text/jsonl/hf) are split by document when there are at least 3 (a seeded shuffle gives
each split round(n * fraction) documents, at least one), else by character ranges (the last
`val_fraction` and `test_fraction` of the text). Prompt/completion pairs are always split by pair.

Modes (`mode`):
  * `pack`: every document's tokens followed by eos, concatenated per split and cut into blocks of
    exactly `seq_len` tokens (the remainder is dropped); attention_mask all ones, labels = input_ids.
  * `pad`: one example per document, truncated to `seq_len`, right-padded with the pad id;
    attention_mask and labels (-100) mask the padding.
  Prompt/completion pairs are always one padded example each: prompt + completion + eos, with the
  prompt's labels -100, so only the completion is learned.

Labels are NOT shifted: the model shifts (logits[:, :-1] predict labels[:, 1:]); -100 marks a
position that no loss counts.

Tokenizer (`tokenizer`): `bpe` trains a byte-level BPE (`vocab_size`, special tokens `<|pad|>` and
`<|endoftext|>`) on the training split only and caches it in `cache_dir`; any other value is a local
directory holding a pretrained tokenizer (`save_pretrained`), loaded with `local_files_only=True`.

The package, by family: `sources` (reading the four sources, the stdlib corpus, splitting),
`tokenizer` (the BPE or pretrained tokenizer and its cache key), `tensors` (packing and padding
into tensors), `batches` (`SequenceBatches`) and `module` (`TextDataModule`). Every public name is
re-exported here.
"""

from distill.llm.data.batches import SequenceBatches
from distill.llm.data.module import TextDataModule
from distill.llm.data.sources import (
    FOLDER_SUFFIXES,
    HF_FORMATS,
    SOURCES,
    SPLITS,
    STDLIB_MAX_FILE_CHARS,
    STDLIB_SKIP,
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
    "MODES",
    "PAD_TOKEN",
    "SOURCES",
    "SPLITS",
    "STDLIB_MAX_FILE_CHARS",
    "STDLIB_SKIP",
    "Document",
    "Pair",
    "SequenceBatches",
    "TextDataModule",
]
