"""Tokenizers behind one small interface: HF `tokenizer.json` files and an offline byte tokenizer.

Contract:
- `Tokenizer` (a Protocol) is all the engine and server use: `encode(text) -> list[int]`,
  `decode(ids) -> str`, `eos_token_ids`, `bos_token_id`, `vocab_size`.
- `load_tokenizer(path)` wraps `tokenizers.Tokenizer.from_file` on a folder's tokenizer.json (or
  the file itself). Special ids come from tokenizer_config.json (`bos_token`/`eos_token`) and
  generation_config.json (`eos_token_id`, `bos_token_id`), whose eos ids are merged because chat
  models stop on several (Llama-3-Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>); config.json
  is the fallback when neither file names them. A damaged tokenizer.json or JSON file beside it
  is a ValueError naming the file (an absent tokenizer.json is a FileNotFoundError).
- `byte_tokenizer()` is the tokenizer of synthetic models: ids 0..255 are the raw UTF-8 bytes,
  then <|bos|> (256), <|eos|> (257), <|pad|> (258); encode prepends <|bos|> like Llama's. It is a
  real `tokenizers.Tokenizer` (byte-level BPE without merges), so `save_byte_tokenizer` writes a
  tokenizer.json that both `load_tokenizer` and transformers' `AutoTokenizer` read, and any text
  (non-ASCII included) round-trips exactly. No files and no network are needed to build it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import tokenizers
from tokenizers import AddedToken, decoders, models, processors
from tokenizers.pre_tokenizers import ByteLevel

from aisp.model.config import read_json_file

BYTE_BOS, BYTE_EOS, BYTE_PAD = "<|bos|>", "<|eos|>", "<|pad|>"
BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID = 256, 257, 258  # right after the 256 byte ids
BYTE_VOCAB_SIZE = 259


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of aisp needs from a tokenizer."""

    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class HFTokenizer:
    """A `tokenizers.Tokenizer` plus the special ids the model's folder declares."""

    def __init__(self, tok: tokenizers.Tokenizer, bos_token_id: int | None,
                 eos_token_ids: Sequence[int]) -> None:
        self.tok = tok
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; `add_special_tokens` applies the tokenizer's own template (e.g. a leading bos).

        As in HF, a special token's literal text inside `text` (e.g. "<|eos|>") becomes that
        special id, which is what chat templates rely on. Text that is not valid Unicode (a lone
        UTF-16 surrogate, which JSON can carry) is a ValueError: `tokenizers` would raise an
        opaque TypeError ("TextInputSequence must be str").
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"the text holds the lone UTF-16 surrogate {text[e.start]!r} at "
                             f"character {e.start:,}; it is not valid Unicode, so it cannot be "
                             f"tokenized") from None
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`. Ids the tokenizer does not know decode to nothing (the `tokenizers`
        library's rule); a synthetic model whose vocab exceeds its byte tokenizer produces them."""
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json to `path` (a file path)."""
        self.tok.save(str(path))


def load_tokenizer(path: str | Path) -> HFTokenizer:
    """Load tokenizer.json from a model folder (or the file path itself); see module docstring."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {file}; aisp reads only the fast-tokenizer file "
                                f"(save one with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(dir))")
    try:
        tok = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust library raises a bare Exception with the parser's message
        raise ValueError(f"{file} cannot be read by the tokenizers library ({e}); the file may be "
                         f"damaged or cut short, or written by a newer tokenizers than "
                         f"{tokenizers.__version__}: fetch it again") from None
    folder = file.parent
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    gen_cfg = _read_json(folder / "generation_config.json")
    model_cfg = _read_json(folder / "config.json")

    def token_id(value: Any) -> int | None:
        if isinstance(value, dict):  # older files serialise AddedToken as {"content": ..., ...}
            value = value.get("content")
        if value is None:
            return None
        tid = tok.token_to_id(value)
        if tid is None:
            raise ValueError(f"{folder / 'tokenizer_config.json'} names special token {value!r}, "
                             f"which is not in {file}; the two files come from different tokenizers")
        return tid

    eos: list[int] = []
    for tid in [token_id(tok_cfg.get("eos_token")), *_ids(gen_cfg.get("eos_token_id"))]:
        if tid is not None and tid not in eos:
            eos.append(tid)
    if not eos:
        eos = _ids(model_cfg.get("eos_token_id"))
    bos = token_id(tok_cfg.get("bos_token"))
    if bos is None:
        bos = gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id"))
    return HFTokenizer(tok, bos, eos)


def byte_tokenizer() -> HFTokenizer:
    """The offline byte-level tokenizer of synthetic models (see module docstring)."""
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split and no prefix space: bytes map 1:1 to ids, so decode(encode(t)) == t.
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (BYTE_BOS, BYTE_EOS, BYTE_PAD)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BYTE_BOS} $A", pair=f"{BYTE_BOS} $A {BYTE_BOS} $B", special_tokens=[(BYTE_BOS, BYTE_BOS_ID)])
    assert [tok.token_to_id(t) for t in (BYTE_BOS, BYTE_EOS, BYTE_PAD)] == [BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID]
    assert tok.get_vocab_size(with_added_tokens=True) == BYTE_VOCAB_SIZE
    return HFTokenizer(tok, BYTE_BOS_ID, [BYTE_EOS_ID])


def save_byte_tokenizer(out_dir: str | Path, model_max_length: int) -> HFTokenizer:
    """Write tokenizer.json and tokenizer_config.json for the byte tokenizer into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = byte_tokenizer()
    tok.save(out / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BYTE_BOS,
        "eos_token": BYTE_EOS,
        "pad_token": BYTE_PAD,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of tokenizers' ByteLevel."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _read_json(path: Path) -> dict[str, Any]:
    """An optional JSON file next to tokenizer.json: {} when absent, an error naming it when bad."""
    if not path.is_file():
        return {}
    return read_json_file(path, f"the model's {path.name}")
