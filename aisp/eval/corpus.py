"""The default evaluation text: real English prose every Python install has, no download.

`default_corpus()` is the held-out split of the standard library's `pydoc_data.topics` as
`aisp.model.corpus` defines it (the one place the convention lives: the last 10% of the
topics' bytes in sorted key order), so a model trained by `aisp model train` is evaluated on
text it never saw, and its held-out loss and this perplexity are measured on the same bytes.
The text follows the Python version (its topics change between releases), so results carry
`corpus_sha256` and the Python version: compare perplexities only on the same text. It is
technical prose, a domain shift for most models; ΔPPL between two variants of one model on the
same text is what the accuracy checks use it for.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        return {"name": self.name, "num_chars": len(self.text),
                "num_bytes": len(self.text.encode("utf-8")), "corpus_sha256": self.sha256}


def default_corpus(split: str = "eval") -> Corpus:
    """The eval (last 10%) or train (first 90%) split of `pydoc_data.topics`, as text."""
    from aisp.model.corpus import stdlib_corpus

    data = stdlib_corpus(split)   # ValueError names the valid splits
    part = "last 10%" if split == "eval" else "first 90%"
    return Corpus(f"pydoc_data.topics[{split}: {part}] (Python {platform.python_version()})",
                  data.decode("utf-8"))
