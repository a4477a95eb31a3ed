"""Tokenizers of text classification: a WordPiece or byte-level BPE trained on the training split and
cached under a key of its text and settings, or a local pretrained one (see `distill.textcls`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from distill.atomic import remove_stale_temporaries, write_text
from distill.errors import DistillError
from distill.fingerprint import digest_text
from distill.pretrained import local_tokenizer

log = logging.getLogger("distill.textcls")

TRAINED = ("wordpiece", "bpe")
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in a trained vocabulary


def load_pretrained(name: str) -> Any:
    """A tokenizer saved by `save_pretrained` in a local folder (nothing is downloaded), with a pad token."""
    tokenizer = local_tokenizer(name, "tokenizer is 'wordpiece', 'bpe'")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise DistillError(f"tokenizer {name} has neither a pad nor an eos token: batches need one to pad rows")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cache_key(kind: str, vocab_size: int, lowercase: bool, texts: list[str]) -> str:
    """The key of a trained tokenizer: its settings and a digest of the text it learns from."""
    key = {"kind": kind, "vocab_size": vocab_size, "lowercase": lowercase, "text": digest_text(texts)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def train_backend(kind: str, texts: list[str], vocab_size: int, lowercase: bool) -> Any:
    """A `tokenizers.Tokenizer` learned from `texts`, with the special tokens and the
    `[CLS] a [SEP] (b [SEP])` post-processor (token type 0 for the first text, 1 for the second)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: PLC0415

    start = time.perf_counter()
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=UNK))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        backend = Tokenizer(models.BPE(unk_token=UNK))
        if lowercase:
            backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    log.info(
        "Trained a %s tokenizer (vocabulary %d) on %d training characters in %.1f s",
        kind,
        backend.get_vocab_size(),
        sum(map(len, texts)),
        time.perf_counter() - start,
    )
    return backend


def trained_tokenizer(
    kind: str, texts: list[str], vocab_size: int, lowercase: bool, cache_dir: Path
) -> tuple[Any, Path]:
    """The `transformers` tokenizer of `kind` for `texts`: read from the cache when its key is there, else
    trained and written there (atomically). Returns it and its cache file."""
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  (heavy import)

    minimum = 256 + len(SPECIAL_TOKENS) if kind == "bpe" else 2 * len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise DistillError(f"vocab_size must be >= {minimum} for the {kind} tokenizer, got {vocab_size}")
    path = cache_dir / f"tokenizer-{kind}-{cache_key(kind, vocab_size, lowercase, texts)}.json"
    if path.is_file():
        log.info("Reusing tokenizer %s", path)
        backend = Tokenizer.from_file(str(path))
    else:
        backend = train_backend(kind, texts, vocab_size, lowercase)
        remove_stale_temporaries(path.parent)
        write_text(path, backend.to_str())  # atomic: a concurrent run sees the whole file or none
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    return tokenizer, path
