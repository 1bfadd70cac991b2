"""Real text every machine has offline: the Python standard library's own documentation.

Contract (the one place this convention lives; `aisp model train` and the perplexity tools
import it, so a model's held-out loss and its perplexity are measured on the same bytes):
- `pydoc_text()` is every topic of `pydoc_data.topics.topics` (the language reference pages that
  `help("assert")` prints) encoded as UTF-8 and concatenated in sorted key order with nothing in
  between (each topic already ends with a newline).
- `stdlib_corpus("train" | "eval")` splits those bytes once: the last 10 % is the eval split,
  the first 90 % the train split; the two are disjoint and together are the whole text. The cut
  is `len * 9 // 10`, moved forward past any UTF-8 continuation bytes, so both splits decode as
  UTF-8 (a byte-level model does not care; a tool that tokenizes text does).

      pydoc_text():  [ topics in sorted key order ........................ | last 10 % ]
                       stdlib_corpus("train")                               stdlib_corpus("eval")

- `stdlib_sources()` is optional extra *training* text: the standard library's `.py` files in
  sorted path order, concatenated, minus test suites, idlelib, lib2to3 and site-packages, and
  minus `pydoc_data/` itself (that file holds the eval text verbatim: including it would leak
  the eval split into training).
- `corpus_info(data)` is what a log records about a corpus: size, sha256, Python version. The
  text is whatever this interpreter ships, so it differs between Python versions (3.11 has 79
  topics, 466,117 bytes); compare numbers only across runs whose sha256 agrees.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import sysconfig
from pathlib import Path

SPLITS = ("train", "eval")
EVAL_FRACTION_TENTHS = 1  # the last 1/10 of the bytes is the eval split
# Directories of the stdlib left out of `stdlib_sources`: tests and tools (large, odd encodings,
# generated data), third-party packages, and pydoc_data (it *is* the eval text).
_EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages",
                            "dist-packages", "pydoc_data", "__pycache__"})


@functools.cache
def pydoc_text() -> bytes:
    """Every pydoc topic, UTF-8, concatenated in sorted key order (see module docstring)."""
    from pydoc_data.topics import topics

    return b"".join(topics[key].encode("utf-8") for key in sorted(topics))


def split_point(data: bytes) -> int:
    """Index of the first eval byte: 90 % of the way in, moved to a UTF-8 character start."""
    cut = len(data) * (10 - EVAL_FRACTION_TENTHS) // 10
    while cut < len(data) and data[cut] & 0xC0 == 0x80:  # 0b10xxxxxx continues a character
        cut += 1
    return cut


def stdlib_corpus(split: str = "train") -> bytes:
    """The train (first 90 %) or eval (last 10 %) bytes of `pydoc_text()`."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    data = pydoc_text()
    cut = split_point(data)
    return data[:cut] if split == "train" else data[cut:]


@functools.cache
def stdlib_sources() -> bytes:
    """The stdlib's .py files (sorted paths, concatenated), without tests and pydoc_data."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1]))
    if not files:
        raise FileNotFoundError(f"no .py files under {root}: this Python ships its standard "
                                f"library compiled only; train on the pydoc text alone")
    return b"".join(p.read_bytes() for p in files)


def corpus_info(data: bytes) -> dict[str, object]:
    """Provenance of a corpus for logs: its size, sha256 and the interpreter that supplied it."""
    return {"num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "python": platform.python_version()}
