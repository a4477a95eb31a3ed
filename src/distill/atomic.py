"""Files that appear whole or not at all, with the permissions every other file gets.

Every model, checkpoint, report and cache file is written to a temporary file beside its target and
renamed over it once complete, so a reader (another run, `ckpt_path=last`) never sees half a file,
and a full disk leaves the previous version in place. Temporary files are created with mode 0666
less the process umask, as `open()` would, so a shared cache stays readable by the team (Python's
`tempfile.mkstemp` would make them 0600). A write that fails because of the disk or the folder
raises `DistillError` with one line naming the path.

Temporary names carry the host and process id (`.<name>.<host>.<pid>.<random>.tmp`), so the
leftovers of a killed writer can be recognised and removed (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from distill.errors import DistillError

TMP_SUFFIX = ".tmp"
STALE_AFTER_S = 24 * 3600  # a temporary file of another host is taken as abandoned after a day


def _host() -> str:
    return socket.gethostname().split(".")[0].replace(".", "_") or "host"


def temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def write_error(path: Path | str, err: OSError) -> DistillError:
    """The one-line error of a failed write."""
    reason = err.strerror or str(err) or type(err).__name__
    return DistillError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", encoding: str | None = None, sync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it is flushed, synced (unless `sync` is
    false: the rename alone is atomic against a killed process, not against a power cut) and renamed to `path`.

    On any failure the temporary file is removed and `path` keeps its previous content; an `OSError`
    becomes a one-line `DistillError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as err:
        raise write_error(path, err) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        raise write_error(path, err) from None
    except BaseException:
        _unlink(tmp)
        raise


def save_torch(obj: Any, path: str | Path, sync: bool = True) -> int:
    """`torch.save(obj)` to `path`, atomically; returns the size in bytes.

    Serialised in memory first (as Lightning's own writer does): torch's zip writer reports a failed
    disk write as a bare RuntimeError, while a plain file write raises the OSError that names it.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb", sync=sync) as f:
        f.write(buffer.getbuffer())
    return buffer.getbuffer().nbytes


def write_bytes(path: str | Path, data: bytes) -> int:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return len(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as err:
        return err.errno != errno.ESRCH
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files left in `folder` by writers that died before renaming them.

    A file of this host is stale when its process no longer runs; any file when it has not changed
    for a day (another host's, on a shared file system). Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    host, now = _host(), time.time()
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 3)  # .<name>, host, pid, random
        try:
            stale = now - tmp.stat().st_mtime > STALE_AFTER_S
            if len(parts) == 4 and parts[2].isdigit() and parts[1] == host:
                stale = stale or (int(parts[2]) != os.getpid() and not _pid_alive(int(parts[2])))
        except OSError:
            continue
        if stale:
            _unlink(tmp)
            removed.append(tmp)
    return removed
