"""The wire between front end and engine core: every message decodes back to what was sent, as
the same types; anything else is refused rather than turned into an object."""

from __future__ import annotations

import msgspec
import pytest

from aisp.engine.core import (AbortRequests, AddRequest, CoreBatch, Shutdown, StopRequests)
from aisp.engine.core_messages import decode_batch, decode_command, encode_batch, encode_command
from aisp.engine.engine import RequestMetrics, RequestOutput, StepStats
from aisp.engine.ipc_bench import main as ipc_bench_main
from aisp.engine.plan import SchedulerStats
from aisp.engine.sampling_params import SamplingParams


@pytest.mark.parametrize("command", [
    AddRequest("cmpl-1", (1, 2, 3), SamplingParams(max_tokens=7, temperature=0.5, top_k=4,
                                                   stop_token_ids=(9,), seed=3), 2, 123.25),
    AbortRequests(("a", "b")),
    StopRequests((("a", "###"), ("b", "\n\n"))),
    Shutdown(),
])
def test_commands_round_trip(command):
    assert decode_command(encode_command(command)) == command


def test_a_step_batch_round_trips_and_finished_outputs_travel_slim():
    stats = StepStats(SchedulerStats(3, 1, 0.25, 10, 0, 5, 2, 8, 4), 3, 7, 2, 0.01,
                      finished_request_ids=("b",), scheduled=(("a", 1, True),),
                      num_running=3, kv_cache_usage=0.5, graph_path="piecewise")
    live = RequestOutput("a", (5,), False, token_time=2.0, first_scheduled_time=1.5,
                         num_cached_tokens=16, num_preemptions=1)
    done = RequestOutput("b", (6,), True, "length", None, (1, 2), (6,), None,
                         RequestMetrics(1.0, 1.5, 2.0, (2.0,), 2.0, 0, 0), token_time=2.0)
    batch = CoreBatch(outputs=(live, done), admitted=("c",), rejected=(("d", "too long"),),
                      stats=(stats,), kv_free_blocks=9, num_unfinished=2)
    got = decode_batch(encode_batch(batch))
    assert got.outputs[0] == live and isinstance(got.outputs[0], RequestOutput)
    # The whole-output fields of a finished one are the front end's to build: not sent.
    assert got.outputs[1] == msgspec.structs.replace(done, prompt_token_ids=(),
                                                     output_token_ids=(), metrics=None)
    # Stats travel without their per-request lists.
    assert got.stats[0].scheduler == stats.scheduler and got.stats[0].scheduled == ()
    assert got.stats[0].graph_path == "piecewise" and got.stats[0].num_running == 3
    assert (got.admitted, got.rejected, got.kv_free_blocks) == (("c",), (("d", "too long"),), 9)


def test_malformed_or_unknown_messages_are_refused():
    with pytest.raises(msgspec.ValidationError, match="unknown command"):
        decode_command(msgspec.msgpack.encode(("exec", {"code": "rm -rf /"})))
    with pytest.raises(msgspec.ValidationError):
        decode_command(msgspec.msgpack.encode(("add", ["id", "not a list of ids"])))
    with pytest.raises(msgspec.ValidationError):
        decode_batch(msgspec.msgpack.encode({"outputs": "nope"}))
    # A sampling value the engine would refuse is refused while decoding (its __post_init__).
    bad = encode_command(AddRequest("x", (1,), SamplingParams(), 0, 0.0)).replace(
        msgspec.msgpack.encode(1.0), msgspec.msgpack.encode(-1.0), 1)
    with pytest.raises(msgspec.ValidationError, match="temperature"):
        decode_command(bad)


def test_the_ipc_benchmark_measures_every_transport(tmp_path, capsys):
    out = tmp_path / "ipc.json"
    ipc_bench_main(["--requests", "16", "--messages", "20", "--json", str(out)])
    rows = msgspec.json.decode(out.read_bytes())["rows"]
    names = {r["transport"] for r in rows}
    assert {"msgspec+pipe", "json+pipe", "pickle+pipe"} <= names
    assert all(r["round_trip_us_median"] > 0 and r["bytes"] > 16 * 30 for r in rows)
