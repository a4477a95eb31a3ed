"""The tokenizer: a byte-level BPE trained on the training split (with chat data, on the rendered
conversations) and cached under its key, or a local pretrained one (see `distill.llm.data`)."""

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
from distill.fingerprint import digest_text, tokenizer_digest
from distill.llm.data.chat import ChatMixin
from distill.llm.data.sources import Document, Pair
from distill.pretrained import local_tokenizer

log = logging.getLogger("distill.llm.data")  # one logger for the whole package

PAD_TOKEN, EOS_TOKEN = "<|pad|>", "<|endoftext|>"


class TokenizerMixin(ChatMixin):
    """`TextDataModule`'s tokenizer: loading or training it, its cache key and digest, encoding."""

    tokenizer_name: str
    requested_vocab_size: int
    tokenizer_path: Path | None
    documents: dict[str, list]
    tokenizer: Any
    _tokenizer: Any
    split_digits: bool

    def _tokenizer_digest(self) -> str:
        return tokenizer_digest(self.tokenizer)

    def _bpe_texts(self, train: list) -> list[str]:
        """The strings a BPE learns from: each document, each pair's prompt and completion, or each
        conversation as the chat template renders it (so the template's markers are learned too)."""
        texts: list[str] = []
        for item in train:
            if isinstance(item, Document):
                texts.append(item.text)
            elif isinstance(item, Pair):
                texts += [item.prompt, item.completion]
            else:
                texts.append(self._rendered(item).text)
        return texts

    def _bpe_special_tokens(self) -> list[str]:
        """The BPE's special tokens: pad and eos, and with chat data the template's `<|...|>` markers."""
        markers = self._chat().markers() if self.chat else []
        return [PAD_TOKEN, EOS_TOKEN] + [m for m in markers if m not in (PAD_TOKEN, EOS_TOKEN)]

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
        # Only set where used, so the keys of other data (and their cached files) stay as they were.
        if self.chat:
            key["chat"] = {"template": self._chat().digest, "messages_field": self.messages_field}
        if self.split_digits:
            key["split_digits"] = True
        if self.source == "arithmetic":
            key["arithmetic"] = [self.num_examples, list(self.digits), list(self.operations)]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _ready(self, tokenizer: Any) -> Any:
        """The tokenizer, checked: an eos token to end documents; padding with eos where it has no pad token."""
        if tokenizer.eos_token_id is None:
            raise DistillError(f"tokenizer '{self.tokenizer_name}' has no eos token; documents need one to end them")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _load_tokenizer(self, train: list) -> Any:
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  (heavy import)

        if self.tokenizer_name != "bpe":
            loaded = local_tokenizer(self.tokenizer_name, "data.tokenizer is 'bpe'")
            if self.chat_template is not None:  # the configured template travels with the tokenizer (export)
                loaded.chat_template = self.chat_template
            return loaded
        from tokenizers import Tokenizer  # noqa: PLC0415

        special = self._bpe_special_tokens()
        if self.requested_vocab_size < 256 + len(special):
            raise DistillError(
                f"vocab_size must be >= {256 + len(special)} (256 bytes + {len(special)} special tokens), "
                f"got {self.requested_vocab_size}"
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
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, clean_up_tokenization_spaces=False
        )
        if self.chat:
            tokenizer.chat_template = self._chat().source  # written with it by save_pretrained
        return tokenizer

    def _train_bpe(self, train: list) -> Any:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

        texts = self._bpe_texts(train)
        start = time.perf_counter()
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if self.split_digits:  # every digit its own token: numbers are read digit by digit
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            )
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size,
            special_tokens=self._bpe_special_tokens(),
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
