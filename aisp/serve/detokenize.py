"""Incremental detokenization for streaming: text deltas whose concatenation is the final text.

Contract:
- `IncrementalDetokenizer(tokenizer, stop)`; `add(new_token_ids) -> str` returns the text that
  is now safe to send; `finish(final_text) -> str` returns the rest, where `final_text` is the
  engine's text of the finished request (decode of all output ids, cut before a stop string).
  The concatenation of every `add` and the `finish` is exactly `final_text`.
- Held back, and sent later (or never, if it turns out not to be output):
  * an incomplete UTF-8 sequence: byte-level tokens can split a character, and the partial
    decode ends in U+FFFD, which a later token replaces with the real character;
  * text that could be the start of a stop string: if the stop string completes, the engine cuts
    the text before it, so those characters must never have been sent. The hold-back is the
    longest suffix of the text that is a proper prefix of some stop string, and text from a
    completed stop string on (the engine finishes that step), so what was sent is always a
    prefix of the final text.
- Cost: each token decodes a small window (vLLM's prefix/read offsets: the previous token(s) as
  context, so tokenizers that drop a leading space at the start of a decode stay exact), not the
  whole output; O(1) per token except while an incomplete character is held.
- `finish` checks that what was sent is a prefix of `final_text`; a tokenizer whose windowed
  decodes do not compose would break that, and the mismatch is logged rather than hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aisp.model.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "stop_prefix_holdback"]

log = logging.getLogger(__name__)
REPLACEMENT = "\ufffd"


def stop_prefix_holdback(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class IncrementalDetokenizer:
    """Per-request streaming text state; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.token_ids: list[int] = []
        self.text = ""           # decoded text of token_ids[:read_offset]
        self.prefix_offset = 0   # start of the context window
        self.read_offset = 0     # tokens up to here are in `text`
        self.num_sent = 0        # characters of `text` already returned

    def add(self, new_token_ids: Sequence[int]) -> str:
        """Consume a delta of token ids; return the text that is now safe to send."""
        self.token_ids.extend(new_token_ids)
        decode = self.tokenizer.decode
        window = self.token_ids[self.prefix_offset:]
        prefix = decode(self.token_ids[self.prefix_offset:self.read_offset])
        full = decode(window)
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.text += full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
        safe = len(self.text) - stop_prefix_holdback(self.text, self.stop)
        hits = [i for i in (self.text.find(s, self.num_sent) for s in self.stop) if i >= 0]
        if hits:   # a stop string just completed: the engine finishes this step and cuts here
            safe = min(safe, min(hits))
        if safe <= self.num_sent:
            return ""
        delta = self.text[self.num_sent:safe]
        self.num_sent = safe
        return delta

    def finish(self, final_text: str) -> str:
        """The remainder of `final_text` after everything already returned."""
        sent = self.text[:self.num_sent]
        if not final_text.startswith(sent):
            log.warning("streamed text %r is not a prefix of the final text %r; the tokenizer's "
                        "windowed decodes do not compose", sent[-40:], final_text[-40:])
            return ""
        self.num_sent = len(final_text)
        return final_text[len(sent):]
