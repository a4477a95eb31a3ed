"""What every task reads from local folders written by `save_pretrained` (nothing is downloaded): a
tokenizer, and the fingerprint of a model folder for cache keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.fingerprint import folder_fingerprint


def local_tokenizer(name: str, choices: str) -> Any:
    """The tokenizer saved in the local folder `name`; one line when the folder is missing (`choices` names
    what else the setting may be, e.g. "data.tokenizer is 'bpe'") or holds no tokenizer."""
    from transformers import AutoTokenizer  # noqa: PLC0415  (heavy import)

    path = Path(name).expanduser()
    if not path.is_dir():
        raise DistillError(
            f"tokenizer directory not found: {name} ({choices} or a local directory written by save_pretrained; "
            "nothing is downloaded)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise DistillError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None


def model_files(path: Any) -> dict[str, str]:
    """For a model read from the local folder `path`, `{"model_files": <fingerprint of its files>}` (for cache
    keys: a changed checkpoint retrains what learnt from it); empty for anything else."""
    if path and Path(str(path)).expanduser().is_dir():
        return {"model_files": folder_fingerprint(Path(str(path)).expanduser())}
    return {}
