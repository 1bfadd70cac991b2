"""Prompt datasets read from a JSON or JSONL file.

Contract: `load_dataset(path)` returns every usable entry and counts the rest by reason; it
never guesses at a malformed entry. A file whose first non-space character is `[` is one JSON
list; anything else is JSONL (one JSON value per line, blank lines ignored). Accepted entries:

- a string: the prompt (needs a fixed output length: --output-len);
- ShareGPT: {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}
  (also "role"/"content" keys, "user"/"assistant" roles, or a "messages" list): the prompt is the
  first human turn; the output length is the first reply after it, counted in whitespace-separated
  words (a stand-in for tokens: the server's tokenizer is not available here);
- {"prompt": str or [token ids], "output_len" or "max_tokens": int, or "completion": str}.

Skipped entries are counted by reason (e.g. "no human turn", "empty reply"), so the report can
say how much of a file was unusable.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aisp.loadtest.config import ConfigError

HUMAN_ROLES = ("human", "user")
REPLY_ROLES = ("gpt", "assistant", "chatgpt", "bard", "model")


@dataclass(frozen=True)
class DatasetEntry:
    prompt: str | tuple[int, ...]
    output_len: int | None  # None: the entry gave none (a fixed --output-len must be used)


@dataclass
class Dataset:
    entries: list[DatasetEntry]
    format: str  # "json" or "jsonl"
    num_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)


class _Skip(Exception):
    """An entry that is not usable; the message is the reason counted in the report."""


def _turn(turn: Any) -> tuple[str, Any]:
    if not isinstance(turn, dict):
        raise _Skip("turn is not an object")
    role = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if not isinstance(role, str):
        raise _Skip("turn without from/role")
    return role.lower(), value


def _conversation(turns: Any, need_output_len: bool) -> DatasetEntry:
    if not isinstance(turns, list) or not turns:
        raise _Skip("conversations is not a non-empty list")
    parsed = [_turn(t) for t in turns]
    human = next((i for i, (role, _) in enumerate(parsed) if role in HUMAN_ROLES), None)
    if human is None:
        raise _Skip("no human turn")
    prompt = parsed[human][1]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Skip("empty human turn")
    reply = next((v for role, v in parsed[human + 1:] if role in REPLY_ROLES), None)
    if reply is None:
        if need_output_len:
            raise _Skip("no reply to take the output length from")
        return DatasetEntry(prompt, None)
    if not isinstance(reply, str) or not reply.split():
        if need_output_len:
            raise _Skip("empty reply")
        return DatasetEntry(prompt, None)
    return DatasetEntry(prompt, len(reply.split()))


def _entry(raw: Any, need_output_len: bool, text_only: bool) -> DatasetEntry:
    if isinstance(raw, str):
        if not raw.strip():
            raise _Skip("empty prompt")
        if need_output_len:
            raise _Skip("bare string without output length")
        return DatasetEntry(raw, None)
    if not isinstance(raw, dict):
        raise _Skip("entry is neither an object nor a string")
    if "conversations" in raw or "messages" in raw:
        return _conversation(raw.get("conversations", raw.get("messages")), need_output_len)
    if "prompt" not in raw:
        raise _Skip("object without conversations, messages or prompt")
    prompt = raw["prompt"]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                 for t in prompt):
            raise _Skip("prompt list is not non-negative token ids")
        if text_only:
            raise _Skip("token-id prompt (chat takes text)")
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise _Skip("empty prompt")
    n = raw.get("output_len", raw.get("max_tokens"))
    if n is None and isinstance(raw.get("completion"), str) and raw["completion"].split():
        n = len(raw["completion"].split())
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise _Skip("output length is not a positive integer")
    if n is None and need_output_len:
        raise _Skip("no output length")
    return DatasetEntry(prompt, n)


def load_dataset(path: str | Path, need_output_len: bool = True,
                 text_only: bool = False) -> Dataset:
    """Read `path`; raises ConfigError when the file is not JSON/JSONL or nothing is usable."""
    text = Path(path).read_text(encoding="utf-8")
    reasons: Counter[str] = Counter()
    raws: list[Any] = []
    if text.lstrip().startswith("["):
        fmt = "json"
        try:
            raws = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"dataset '{path}' starts like a JSON list but does not parse "
                              f"({e}); fix the file or write it as JSONL") from None
    else:
        fmt = "jsonl"
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                raws.append(json.loads(line))
            except json.JSONDecodeError:
                reasons["invalid JSON line"] += 1
    entries = []
    for raw in raws:
        try:
            entries.append(_entry(raw, need_output_len, text_only))
        except _Skip as e:
            reasons[str(e)] += 1
    if not entries:
        detail = ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) or "file is empty"
        raise ConfigError(f"dataset '{path}' has no usable entry ({detail}); see datasets.py for "
                          f"the accepted shapes" + ("; or pass --output-len to fix output "
                                                    "lengths" if need_output_len else ""))
    return Dataset(entries, fmt, sum(reasons.values()), dict(reasons))
