"""The incremental detokenizer: deltas never show a half character or the start of a stop string
that then completes, always concatenate to the final text, and stop where a decode of the whole
output after every token (the engine's rule before the front end took stop strings over) stops."""

from __future__ import annotations

import random

import pytest

from aisp.model.tokenizer import byte_tokenizer
from aisp.engine.detokenize import IncrementalDetokenizer, stop_prefix_holdback

TOK = byte_tokenizer()


def engine_like(ids: list[int], stop: tuple[str, ...]) -> tuple[int, str]:
    """The reference: after each token decode the whole output; the first stop string (in list
    order) found ends the request and the text is cut before it. Returns (number of tokens
    produced, final text)."""
    for n in range(1, len(ids) + 1):
        text = TOK.decode(ids[:n])
        hit = next((s for s in stop if s in text), None)
        if hit is not None:
            return n, text[:text.index(hit)]
    return len(ids), TOK.decode(ids)


def stream(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """Deltas as the server sends them, one token at a time (the last one includes finish()),
    and the final text; checks the detokenizer stops on the reference's token with its text."""
    n, final = engine_like(ids, stop)
    detok = IncrementalDetokenizer(TOK, stop)
    deltas = []
    for t in ids:
        delta, used = detok.add([t])
        if not used:
            break
        deltas.append(delta)
    deltas[-1] += detok.finish()
    assert len(deltas) == n and detok.final_text == final
    assert (detok.stopped is not None) == any(s in TOK.decode(ids[:n]) for s in stop)
    return deltas, final


def test_multibyte_characters_are_held_until_complete():
    text = "héllo 日本語 🎉!"
    ids = TOK.encode(text, add_special_tokens=False)
    deltas, final = stream(ids)
    assert "".join(deltas) == final == text
    # One byte token at a time: nothing until a character's last byte, then the character.
    expected = [d for c in text for d in [""] * (len(c.encode()) - 1) + [c]]
    assert deltas == expected


def test_truncated_character_at_the_end_matches_the_engine():
    ids = TOK.encode("ok 日", add_special_tokens=False)[:-1]   # max_tokens cut the character
    deltas, final = stream(ids)
    assert final == "ok \ufffd" and "".join(deltas) == final


def test_stop_string_prefix_is_held_back_and_cut():
    ids = TOK.encode("hello wor world", add_special_tokens=False)
    deltas, final = stream(ids, stop=("world",))
    assert final == "hello wor "
    # "wor" is held while it could still become "world" and released when " " follows; the
    # second "worl" is held and "d" completes the stop string, which is never sent.
    assert deltas == [*"hello ", "", "", "", "wor ", "", "", "", "", ""]


def test_stop_string_completed_by_a_replacement_character():
    # An invalid byte decodes to U+FFFD mid-text; a stop string may contain it.
    ids = [ord("a"), ord("&"), 0xE4, ord("P"), ord("z")]
    stop = ("&\ufffdP",)
    deltas, final = stream(ids, stop)
    assert final == "a" and "".join(deltas) == final


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_and_stop_strings_always_concatenate_to_the_final_text(seed):
    rng = random.Random(seed)
    alphabet = [*b"ab &", 0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xF0, 0x9F, 0x8E, 0x89, 0xFF]
    ids = [rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
    full = TOK.decode(ids)
    stop = tuple(full[i:i + rng.randint(1, 4)] for i in
                 (rng.randrange(len(full)) for _ in range(rng.randint(0, 2))) if full)
    stop = tuple(s for s in stop if s) + ("b&a",)
    deltas, final = stream(ids, stop)
    assert "".join(deltas) == final
    sent = ""
    for d in deltas:
        sent += d
        assert final.startswith(sent)


def test_stop_prefix_holdback():
    assert stop_prefix_holdback("abc", ("cd",)) == 1
    assert stop_prefix_holdback("abc", ("bcd", "cx")) == 2
    assert stop_prefix_holdback("abc", ("xyz",)) == 0
    assert stop_prefix_holdback("abc", ("abc",)) == 0   # complete, not a proper prefix
    assert stop_prefix_holdback("", ("a",)) == 0


@pytest.mark.parametrize("seed", range(20))
def test_a_delta_of_several_tokens_stops_on_the_token_that_completes_the_stop_string(seed):
    """With async scheduling or speculative steps one delta can hold several tokens: the stop
    must land on the same token as one token at a time, and the tokens after it are not output."""
    rng = random.Random(seed)
    ids = [rng.choice(b"ab &xy") for _ in range(rng.randint(4, 30))]
    stop = ("a b", "&&", "yx")
    n, final = engine_like(ids, stop)
    detok = IncrementalDetokenizer(TOK, stop)
    text, consumed, i = "", 0, 0
    while i < len(ids) and detok.stopped is None:
        k = rng.randint(1, 4)
        delta, used = detok.add(ids[i:i + k])
        text, consumed, i = text + delta, consumed + used, i + k
    text += detok.finish()
    assert (consumed, text) == (n, final)


def test_without_stop_strings_a_delta_is_decoded_at_once():
    ids = TOK.encode("héllo wörld", add_special_tokens=False)
    detok = IncrementalDetokenizer(TOK)
    delta, used = detok.add(ids)
    assert used == len(ids) and delta + detok.finish() == "héllo wörld" and detok.stopped is None
