"""Fingerprints of what a model learns from, for cache keys: the content of in-memory data, and the
file list (sizes and modification times) of data streamed from folders or models loaded from them.

A cache key that names a file by its path alone reuses a model trained on whatever the file held
before; these digests change when the content changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(array))


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """A sha256 of named arrays (numpy or torch): names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = _as_numpy(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()[:32]


def digest_text(texts: Iterable[str]) -> str:
    """A sha256 of a sequence of strings (each length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:32]


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of a `transformers` tokenizer's identity: its whole JSON when it is fast (model, vocabulary,
    merges, normalisers), else its vocabulary; and its special tokens."""
    import json  # noqa: PLC0415

    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return digest_text([backend.to_str(), special])
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return digest_text([json.dumps(vocab), special])


def digest_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """A sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:32]


def folder_fingerprint(path: str | Path) -> str:
    """A sha256 of every file under `path` (or of `path` itself): relative name, size and modification time.

    Cheap for large folders (nothing is read), and it changes when a file is added, removed, resized
    or rewritten. Hidden files and folders (`.cache`, `.git`, ...) are left out.
    """
    root = Path(path).expanduser()
    h = hashlib.sha256()
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:32]
    entries = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            full = Path(directory) / name
            try:
                st = full.stat()
            except OSError:
                continue
            entries.append(f"{full.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}")
    for entry in sorted(entries):
        h.update(entry.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]
