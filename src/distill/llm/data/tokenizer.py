"""The tokenizer: a byte-level BPE trained on the training split and cached under its key, or a local
pretrained one (see `distill.llm.data`)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from distill.atomic import remove_stale_temporaries, write_text
from distill.errors import DistillError
from distill.fingerprint import digest_text
from distill.llm.data.sources import Document, TextSettings

log = logging.getLogger("distill.llm.data")  # one logger for the whole package

PAD_TOKEN, EOS_TOKEN = "<|pad|>", "<|endoftext|>"


class TokenizerMixin(TextSettings):
    """`TextDataModule`'s tokenizer: loading or training it, its cache key and digest, encoding."""

    tokenizer_name: str
    requested_vocab_size: int
    tokenizer_path: Path | None
    documents: dict[str, list]
    tokenizer: Any
    _tokenizer: Any

    def _tokenizer_digest(self) -> str:
        tokenizer = self.tokenizer
        special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a fast tokenizer: its whole JSON (model, vocabulary, merges, normalisers)
            return digest_text([backend.to_str(), special])
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        return digest_text([json.dumps(vocab), special])

    @staticmethod
    def _bpe_texts(train: list) -> list[str]:
        """The strings a BPE learns from: each document, or each pair's prompt and completion."""
        return [
            t
            for item in train
            for t in ((item.text,) if isinstance(item, Document) else (item.prompt, item.completion))
        ]

    def _cache_key(self, train: list | None = None) -> str:
        """The BPE's cache key: the settings and a digest of the training text (`train`: the training split's
        documents; read from the source when not given)."""
        if train is None:
            train = self.documents.get("train") or self._load_splits()["train"]
        paths = [str(Path(p).expanduser().resolve()) for p in self.paths or []]
        if self.source == "stdlib":
            paths = [sysconfig.get_paths()["stdlib"], f"python{sys.version_info[0]}.{sys.version_info[1]}"]
        key = {
            "source": self.source,
            "paths": paths,
            "max_chars": self.max_chars,
            "vocab_size": self.requested_vocab_size,
            "seed": self.seed,
            "fractions": [self.val_fraction, self.test_fraction],
            "fields": [self.text_field, self.prompt_field, self.completion_field, self.hf_format],
            "text": digest_text(self._bpe_texts(train)),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _load_tokenizer(self, train: list) -> Any:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: PLC0415  (heavy import)

        if self.tokenizer_name != "bpe":
            path = Path(self.tokenizer_name).expanduser()
            if not path.is_dir():
                raise DistillError(
                    f"tokenizer directory not found: {self.tokenizer_name} "
                    "(data.tokenizer is 'bpe' or a local directory written by save_pretrained; nothing is downloaded)"
                )
            try:
                return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError, TypeError) as err:
                raise DistillError(f"cannot load a tokenizer from {path}: {err}") from None
        from tokenizers import Tokenizer  # noqa: PLC0415

        if self.requested_vocab_size < 258:
            raise DistillError(
                f"vocab_size must be >= 258 (256 bytes + 2 special tokens), got {self.requested_vocab_size}"
            )
        path = self.cache_dir / f"tokenizer-{self._cache_key(train)}.json"
        self.tokenizer_path = path
        if path.is_file():
            log.info("Reusing tokenizer %s", path)
            backend = Tokenizer.from_file(str(path))
        else:
            backend = self._train_bpe(train)
            remove_stale_temporaries(path.parent)
            write_text(path, backend.to_str())  # atomic: a concurrent run sees the whole file or none
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, clean_up_tokenization_spaces=False
        )

    def _train_bpe(self, train: list) -> Any:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

        texts = self._bpe_texts(train)
        start = time.perf_counter()
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size,
            special_tokens=[PAD_TOKEN, EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        self.corpus_stats["tokenizer_train_s"] = time.perf_counter() - start
        log.info(
            "Trained a byte-level BPE tokenizer (vocabulary %d) on %d training characters in %.1f s",
            backend.get_vocab_size(),
            sum(map(len, texts)),
            self.corpus_stats["tokenizer_train_s"],
        )
        return backend

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
