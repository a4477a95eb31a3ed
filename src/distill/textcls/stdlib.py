"""The offline default of text classification: docstrings of Python's own standard library, each
labelled by the area of the library it documents.

Every machine that runs `distill` has this text, so the default task needs no download and no
generated sentences. The docstrings (module, class and function docstrings, read with `ast` from the
stdlib's `.py` files, `test`/`tests`/`idlelib`/`site-packages` skipped) are cleaned as `inspect`
does; those shorter than `MIN_CHARS` characters ("Return self.") are dropped, and a text met again
(a docstring repeated in another module) is kept once, in its first file by path, so that no text is
in two splits.

Splits go by file: each file goes to one split, chosen per class so that every split gets about its
fraction of the class's docstrings (`assign_files`: deterministic, from the files' sizes and paths). The
docstrings of one file share names, vocabulary and cross-references (a class and its methods), so
splitting docstring by docstring would put most of a module's words in every split and measure
memory of the module rather than reading of its area; by file, validation and test docstrings come
from modules the model never saw. A file moves as a block, so the shares are approximate (a class
whose docstrings sit in a few large modules least); the counts are logged.

Each class is capped at `cap` docstrings, keeping those with the smallest hash of (path, position):
the same choice on every run, spread over the class's files.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import sysconfig
import warnings
from collections import Counter
from pathlib import Path

from distill.errors import DistillError
from distill.llm.data.sources import STDLIB_SKIP
from distill.textcls.rows import SPLITS, Example

log = logging.getLogger("distill.textcls")

MIN_CHARS = 20
DEFAULT_CAP = 1200

# The areas: each top-level module or package (a `.py` file's stem or a folder's name) of an area.
AREAS: dict[str, tuple[str, ...]] = {
    "concurrency": (
        "asyncio",
        "concurrent",
        "multiprocessing",
        "threading",
        "_threading_local",
        "queue",
        "sched",
        "selectors",
        "subprocess",
        "signal",
        "contextvars",
        "socketserver",
    ),
    "devtools": (
        "unittest",
        "doctest",
        "pdb",
        "bdb",
        "pydoc",
        "inspect",
        "trace",
        "traceback",
        "profile",
        "cProfile",
        "pstats",
        "timeit",
        "dis",
        "warnings",
        "tracemalloc",
        "cgitb",
        "code",
        "codeop",
        "tabnanny",
        "ast",
        "symtable",
        "tokenize",
        "token",
        "keyword",
        "pyclbr",
        "rlcompleter",
    ),
    "formats": (
        "xml",
        "json",
        "html",
        "csv",
        "configparser",
        "tarfile",
        "zipfile",
        "gzip",
        "bz2",
        "lzma",
        "zipapp",
        "plistlib",
        "pickle",
        "pickletools",
        "shelve",
        "dbm",
        "sqlite3",
        "wave",
        "aifc",
        "sunau",
        "chunk",
        "netrc",
        "base64",
        "binhex",
        "quopri",
        "uu",
        "copyreg",
        "marshal",
        "struct",
        "tomllib",
        "shutil",
    ),
    "gui": ("tkinter", "turtle", "turtledemo"),
    "imports": (
        "importlib",
        "distutils",
        "lib2to3",
        "pkgutil",
        "zipimport",
        "modulefinder",
        "runpy",
        "ensurepip",
        "venv",
        "site",
        "sysconfig",
        "py_compile",
        "compileall",
        "_bootlocale",
        "_osx_support",
        "_aix_support",
        "_pyio",
        "io",
    ),
    "internet": (
        "email",
        "mailbox",
        "smtplib",
        "smtpd",
        "imaplib",
        "poplib",
        "nntplib",
        "ftplib",
        "http",
        "urllib",
        "xmlrpc",
        "wsgiref",
        "ssl",
        "socket",
        "mimetypes",
        "ipaddress",
        "telnetlib",
        "cgi",
        "mailcap",
        "webbrowser",
        "asynchat",
        "asyncore",
        "uuid",
    ),
    "numbers": (
        "_pydecimal",
        "decimal",
        "fractions",
        "numbers",
        "statistics",
        "random",
        "datetime",
        "_strptime",
        "calendar",
        "colorsys",
        "cmath",
        "math",
        "heapq",
        "bisect",
        "secrets",
        "hashlib",
        "hmac",
    ),
}
AREA_OF = {module: area for area, modules in AREAS.items() for module in modules}


def stdlib_root() -> Path:
    """The folder of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def assign_files(sizes: dict[str, int], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """The split of each file of one class (`sizes`: its docstrings per file), so that each split gets about
    its fraction of the class's docstrings: the largest file first (ties by a stable hash of the path), each
    to the split with the most room left among those it fits in (else to the one with the most room)."""
    total = sum(sizes.values())
    room = {"train": (1.0 - val_fraction - test_fraction) * total, "val": val_fraction * total}
    room["test"] = test_fraction * total
    order = sorted(sizes, key=lambda name: (-sizes[name], hashlib.sha256(f"textcls:{name}".encode()).hexdigest()))
    chosen = {}
    for name in order:
        fits = [s for s in SPLITS if sizes[name] <= room[s]] or list(SPLITS)
        split = max(fits, key=lambda s: (room[s], -SPLITS.index(s)))
        chosen[name] = split
        room[split] -= sizes[name]
    return chosen


def _docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one file, in source order (none if it does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)), key=lambda n: getattr(n, "lineno", 0))
    texts = []
    for node in nodes:
        text = ast.get_docstring(node, clean=True)
        if text and len(text.strip()) >= MIN_CHARS:
            texts.append(text.strip())
    return texts


def stdlib_docstrings(
    val_fraction: float = 0.1, test_fraction: float = 0.1, cap: int | None = DEFAULT_CAP
) -> dict[str, list[Example]]:
    """The labelled docstrings of every area, by split (see the module docstring)."""
    root = stdlib_root()
    names = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in STDLIB_SKIP and d != "__pycache__")
        rel = Path(directory).relative_to(root)
        names += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    found: dict[str, list[tuple[str, Example]]] = {area: [] for area in AREAS}
    seen: set[str] = set()
    for name in sorted(names):
        area = AREA_OF.get(name.split("/")[0].removesuffix(".py"))
        if area is None:
            continue
        for position, text in enumerate(_docstrings(root / name)):
            if text in seen:
                continue
            seen.add(text)
            where = f"{name}, docstring {position + 1}"
            order = hashlib.sha256(f"cap:{where}".encode()).hexdigest()
            found[area].append((order, Example(text, None, area, where, group=name)))
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for items in found.values():
        kept = [example for _, example in (sorted(items)[:cap] if cap is not None else items)]
        chosen = assign_files(Counter(e.group for e in kept), val_fraction, test_fraction)
        for example in sorted(kept, key=lambda e: (e.group, int(e.where.rsplit(" ", 1)[1]))):  # file order
            splits[chosen[example.group]].append(example)
    total = sum(map(len, splits.values()))
    if total == 0:
        raise DistillError(f"no docstrings found in the standard library at {root}")
    counts = {s: Counter(e.label for e in splits[s]) for s in SPLITS}
    log.info(
        "Stdlib docstrings from %s: %d examples (%s); per class train/val/test: %s",
        root,
        total,
        ", ".join(f"{len(splits[s])} {s}" for s in SPLITS),
        ", ".join(f"{a} {counts['train'][a]}/{counts['val'][a]}/{counts['test'][a]}" for a in AREAS),
    )
    return splits
