"""Tokenizers: the byte tokenizer round-trips any text; special ids come from the folder's files."""

from __future__ import annotations

import json

import pytest

from aisp.model import Tokenizer, byte_tokenizer, load_tokenizer
from aisp.model.tokenizer import BYTE_BOS_ID, BYTE_EOS_ID, save_byte_tokenizer

TEXTS = ["hello world", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "héllo wörld",
         "日本語のテキスト", "emoji 🙂🚀 mixed Ünïcödé", "", "<not|special> \x00 \x7f"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips(text: str) -> None:
    tok = byte_tokenizer()
    ids = tok.encode(text)
    assert ids[0] == BYTE_BOS_ID
    assert tok.decode(ids) == text
    assert ids[1:] == list(text.encode("utf-8"))


def test_special_token_text_encodes_as_the_special_id() -> None:
    # Same rule as HF tokenizers: a special token's text in the input is that token (so a chat
    # template can write "<|eos|>"); decode drops it unless asked to keep specials.
    tok = byte_tokenizer()
    ids = tok.encode("a<|eos|>b", add_special_tokens=False)
    assert ids == [ord("a"), BYTE_EOS_ID, ord("b")]
    assert tok.decode(ids) == "ab" and tok.decode(ids, skip_special_tokens=False) == "a<|eos|>b"


def test_byte_tokenizer_interface_and_file_round_trip(tmp_path) -> None:
    tok = byte_tokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 259 and tok.eos_token_ids == (BYTE_EOS_ID,) and tok.bos_token_id == BYTE_BOS_ID
    save_byte_tokenizer(tmp_path, model_max_length=128)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.vocab_size, loaded.eos_token_ids, loaded.bos_token_id) == (259, (BYTE_EOS_ID,), BYTE_BOS_ID)
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(tok.encode("ñ", add_special_tokens=False) + [BYTE_EOS_ID]) == "ñ"


def test_generation_config_eos_ids_are_merged(tmp_path) -> None:
    save_byte_tokenizer(tmp_path, model_max_length=128)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [258, 257]}))
    assert load_tokenizer(tmp_path).eos_token_ids == (257, 258)


def test_tokenizer_config_naming_an_unknown_token_is_an_error(tmp_path) -> None:
    save_byte_tokenizer(tmp_path, model_max_length=128)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>"}))
    with pytest.raises(ValueError, match=r"<\|eot_id\|>"):
        load_tokenizer(tmp_path)


def test_missing_tokenizer_file_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_text_that_is_not_unicode_is_a_value_error_naming_the_character(tmp_path) -> None:
    # JSON can carry a lone UTF-16 surrogate; `tokenizers` would raise an opaque TypeError.
    save_byte_tokenizer(tmp_path, model_max_length=64)
    for tok in (byte_tokenizer(), load_tokenizer(tmp_path)):
        with pytest.raises(ValueError, match=r"surrogate '\\ud800' at character 2"):
            tok.encode("ab\ud800c")
        assert tok.encode("ab\U0001f600", add_special_tokens=False) == \
            list("ab".encode()) + list("\U0001f600".encode())
