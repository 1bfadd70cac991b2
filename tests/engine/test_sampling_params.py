"""SamplingParams: frozen, validated at construction, errors that name the value and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from aisp.engine.sampling_params import SamplingParams


def test_defaults_and_normalization():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (16, 1.0, 0, 1.0, 0.0)
    assert not p.greedy and SamplingParams(temperature=0).greedy
    q = SamplingParams(top_k=-1, stop="###", stop_token_ids=[7, 8])
    assert (q.top_k, q.stop, q.stop_token_ids) == (0, ("###",), (7, 8))
    assert hash(q) == hash(SamplingParams(top_k=0, stop=("###",), stop_token_ids=(7, 8)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_tokens = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_tokens": -1}, "max_tokens is -1; it must be an integer >= 1"),
     ({"max_tokens": 0}, "max_tokens is 0"),
     ({"max_tokens": True}, "max_tokens is True"),
     ({"temperature": -0.5}, "temperature is -0.5; it must be a finite number >= 0"),
     ({"temperature": float("nan")}, "temperature is nan"),
     ({"top_k": -2}, "top_k is -2"),
     ({"top_p": 0.0}, r"top_p is 0.0; it must lie in \(0, 1\]"),
     ({"top_p": 1.5}, "top_p is 1.5"),
     ({"min_p": 2}, r"min_p is 2; it must lie in \[0, 1\]"),
     ({"seed": 1.5}, "seed is 1.5"),
     ({"stop_token_ids": (3, -1)}, r"stop_token_ids contains \[-1\]"),
     ({"stop": ["ok", ""]}, r"stop contains \[''\]"),
     ({"min_tokens": 20, "max_tokens": 10}, "min_tokens is 20 with max_tokens=10"),
     ({"ignore_eos": "yes"}, "ignore_eos is 'yes'")],
)
def test_invalid_values_raise_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_replace_validates_again():
    with pytest.raises(ValueError, match="top_p is 2"):
        dataclasses.replace(SamplingParams(), top_p=2)


def test_from_dict_rejects_unknown_keys_and_treats_none_as_default():
    p = SamplingParams.from_dict({"max_tokens": 5, "stop": None, "ignore_eos": True, "min_tokens": None})
    assert (p.max_tokens, p.stop, p.ignore_eos, p.min_tokens) == (5, (), True, 0)
    with pytest.raises(ValueError, match=r"unknown sampling parameter\(s\) \['max_new_tokens'\]; valid names are"):
        SamplingParams.from_dict({"max_new_tokens": 5})
