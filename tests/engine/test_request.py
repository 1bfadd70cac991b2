"""Request: validation, token counts, status and finish reasons, the ruler's invariants."""

from __future__ import annotations

import pytest

from aisp.engine.request import Request, RequestStatus
from aisp.engine.sampling_params import SamplingParams


def test_counts_and_append():
    r = Request("r", [5, 6, 7], SamplingParams(max_tokens=4), arrival_time=1.0, priority=2)
    assert (r.num_prompt_tokens, r.num_output_tokens, r.num_tokens, r.max_tokens) == (3, 0, 3, 4)
    assert r.prompt_token_ids == (5, 6, 7) and r.status == RequestStatus.WAITING
    r.num_pending_tokens = 1  # a step sampled it
    r.append_output_token(9, now=2.0)
    r.num_pending_tokens = 1
    r.append_output_token(10, now=3.0)
    assert r.all_token_ids == [5, 6, 7, 9, 10] and r.num_tokens == 5
    assert r.first_token_time == 2.0 and r.token_times == [2.0, 3.0]
    r.check_invariants(block_size=4)
    assert "prompt=3, output=2" in repr(r)


def test_status_finish_reasons():
    assert [s.finish_reason for s in RequestStatus] == [None, None, None, "stop", "length", "abort"]
    assert not RequestStatus.PREEMPTED.is_finished and RequestStatus.FINISHED_ABORTED.is_finished


def test_identity_semantics():
    a, b = Request("x", [1]), Request("x", [1])
    assert a != b and a == a and len({a, b}) == 2


@pytest.mark.parametrize(
    "args, message",
    [(("", [1]), "request_id is ''"),
     (("r", []), "empty prompt"),
     (("r", [1, -2]), r"invalid prompt token ids \[-2\]"),
     (("r", [1], {"max_tokens": 3}), "pass a SamplingParams")],
)
def test_validation(args, message):
    with pytest.raises(ValueError, match=message):
        Request(*args)
