"""The default evaluation text: real English prose every Python install has, no download.

`default_corpus()` is the held-out split of the standard library's `pydoc_data.topics` (the
Python reference's help topics, ~465k characters on CPython 3.11): the topics are joined in
sorted key order with a blank line between them, and the **last 10%** of those characters is the
eval split (cut at the first line break at or after 90%, so no line starts mid-word); the first
90% is left for anything that trains or calibrates (`split="train"`). The text follows the
Python version (its topics change between releases), so results carry `corpus_sha256` and the
Python version: compare perplexities only on the same text. It is technical prose, a domain
shift for most models; ΔPPL between two variants of one model on the same text is what the
accuracy checks use it for.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass

EVAL_FRACTION = 0.10


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
    """`pydoc_data.topics`, split as the module docstring says ("eval" or "train")."""
    from pydoc_data.topics import topics

    if split not in ("eval", "train"):
        raise ValueError(f"unknown split {split!r}; choose eval or train")
    full = "\n\n".join(topics[k].strip() for k in sorted(topics))
    cut = full.find("\n", int(len(full) * (1 - EVAL_FRACTION)))
    cut = len(full) if cut < 0 else cut + 1
    text = full[cut:] if split == "eval" else full[:cut]
    return Corpus(f"pydoc_data.topics[{split}: last {EVAL_FRACTION:.0%}] (Python "
                  f"{platform.python_version()})" if split == "eval" else
                  f"pydoc_data.topics[train: first {1 - EVAL_FRACTION:.0%}] (Python "
                  f"{platform.python_version()})", text)
