"""Incremental detokenization with stop strings: the front end's text, built once per request.

Contract:
- `IncrementalDetokenizer(tokenizer, stop)`; `add(new_token_ids) -> (delta, consumed)` returns
  the text that is now safe to send and how many of the tokens belong to the output: all of
  them, unless a stop string completed, which sets `stopped` (the stop string) and ends the
  output at the token that completed it (later tokens are not output). `finish() -> str` returns
  the rest of the final text, and `final_text` is that text: the decode of every output token,
  cut before the stop string when one matched. The concatenation of every delta and `finish()`
  is exactly `final_text`.
- Stop strings match what a decode of the whole output so far shows after each token (the
  first stop string in list order that appears ends it, cut at its first occurrence), as if the
  output were decoded from scratch every token, but at a cost per token that does not grow with
  the output. Several tokens in one delta are checked one at a time, so the stop lands on the
  token that completed it.
- Held back, and sent later (or never, if it turns out not to be output):
  * an incomplete UTF-8 sequence: byte-level tokens can split a character, and the partial
    decode ends in U+FFFD, which a later token replaces with the real character;
  * text that could be the start of a stop string: the longest suffix of the text that is a
    proper prefix of some stop string, so what was sent is always a prefix of the final text.
- Cost: each token decodes a small window (vLLM's prefix/read offsets: the previous token(s) as
  context, so tokenizers that drop a leading space at the start of a decode stay exact); the stop
  search looks only at the text a token could have completed; `finish` decodes the whole output
  once. `finish` checks that what was sent is a prefix of the final text; a tokenizer whose
  windowed decodes do not compose would break that, and the mismatch is logged, not hidden.
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
        self._longest_stop = max((len(s) for s in self.stop), default=0)
        self.token_ids: list[int] = []
        self.text = ""           # decoded text of token_ids[:read_offset]
        self.pending = ""        # decoded text of the tokens after read_offset (may end in U+FFFD)
        self.prefix_offset = 0   # start of the context window
        self.read_offset = 0     # tokens up to here are in `text`
        self.num_sent = 0        # characters of `text` already returned
        self._searched = 0       # visible text before this index holds no stop string
        self.stopped: str | None = None   # the stop string that ended the output
        self._stop_at: int | None = None  # where it starts in the visible text
        self._final: str | None = None

    def add(self, new_token_ids: Sequence[int]) -> tuple[str, int]:
        """Consume a delta of token ids; return (text now safe to send, tokens that are output)."""
        if self.stopped is not None:
            return "", 0
        if not self.stop:   # no stop string can end the output: decode the delta at once
            self._extend(new_token_ids)
            return self._release(len(self.text)), len(new_token_ids)
        for i, token in enumerate(new_token_ids):
            self._extend((token,))
            if self._find_stop():
                return self._release(min(len(self.text), self._stop_at)), i + 1
        safe = len(self.text) - stop_prefix_holdback(self.text, self.stop)
        return self._release(safe), len(new_token_ids)

    def _extend(self, token_ids: Sequence[int]) -> None:
        self.token_ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self.prefix_offset:self.read_offset])
        full = decode(self.token_ids[self.prefix_offset:])
        tail = full[len(prefix):] if len(full) > len(prefix) else ""
        if tail and not full.endswith(REPLACEMENT):
            self.text += tail
            self.pending = ""
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
        else:
            self.pending = tail

    def _find_stop(self) -> bool:
        """After a token: did a stop string appear in the visible text (committed + pending)?"""
        visible = self.text + self.pending
        start = max(0, self._searched - self._longest_stop + 1)
        for s in self.stop:   # list order decides between stop strings completed by one token
            at = visible.find(s, start)
            if at >= 0:
                self.stopped, self._stop_at = s, at
                self._final = visible[:at]
                return True
        # Pending text can still change (U+FFFD replaced); search it again next time.
        self._searched = len(self.text)
        return False

    def _release(self, safe: int) -> str:
        if safe <= self.num_sent:
            return ""
        delta = self.text[self.num_sent:safe]
        self.num_sent = safe
        return delta

    @property
    def final_text(self) -> str:
        """The output's text: a decode of every output token, cut before a matched stop string."""
        if self._final is None:
            self._final = self.tokenizer.decode(self.token_ids)
        return self._final

    def finish(self) -> str:
        """The remainder of `final_text` after everything already returned."""
        final = self.final_text
        sent = self.text[:self.num_sent]
        if not final.startswith(sent):
            log.warning("streamed text %r is not a prefix of the final text %r; the tokenizer's "
                        "windowed decodes do not compose", sent[-40:], final[-40:])
            return ""
        self.num_sent = len(final)
        return final[len(sent):]
