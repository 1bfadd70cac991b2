"""What one step's message costs between the engine core and the front end, per transport.

    python -m aisp.engine.ipc_bench [--requests 256] [--messages 2000] [--json PATH]

A step of a full batch sends one `CoreBatch` with an output per running request (one new
token each, as in decode). This measures, between two processes, the round trip of such a
message: encode, write, read, decode on the other side, and an 8-byte reply back (so the
sender cannot run ahead and the time is per message, not per buffered burst). Candidates:

- `msgspec+pipe`: aisp's transport (aisp.engine.core_messages over a multiprocessing pipe);
- `json+pipe`: the same batch as JSON (types lost: the reader gets dicts);
- `pickle+pipe`: for reference only; pickle may not cross from the network side;
- `msgspec+zmq`: msgspec over a ZeroMQ PAIR socket on ipc:// (vLLM's choice), if pyzmq is
  installed.

The number that matters is the round trip against a GPU step (10 ms at a 256-request decode
of an 8B model on an H200): the transport is a good choice when it is a small fraction of
that. The median of `--messages` round trips after 100 warm-up ones is reported, with the
message size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import statistics
import sys
import time
from typing import Any

from aisp.engine.core import CoreBatch
from aisp.engine.core_messages import decode_batch, encode_batch
from aisp.engine.engine import RequestOutput

WARMUP = 100


def step_batch(num_requests: int) -> CoreBatch:
    """A decode step's batch: one token per request, ids as the server makes them."""
    return CoreBatch(outputs=tuple(
        RequestOutput(f"cmpl-{i:032x}", (1000 + i,), False, token_time=1234.5 + i * 1e-6,
                      first_scheduled_time=1200.0, num_cached_tokens=16)
        for i in range(num_requests)), kv_free_blocks=4000, num_unfinished=num_requests)


def _json_encode(batch: CoreBatch) -> bytes:
    return json.dumps({"outputs": [[o.request_id, list(o.new_token_ids), o.finished, o.token_time,
                                    o.first_scheduled_time, o.num_cached_tokens]
                                   for o in batch.outputs],
                       "kv_free_blocks": batch.kv_free_blocks,
                       "num_unfinished": batch.num_unfinished}).encode()


CODECS = {
    "msgspec": (encode_batch, decode_batch),
    "json": (_json_encode, json.loads),
    "pickle": (pickle.dumps, pickle.loads),
}


def _pipe_echo(conn, codec: str) -> None:
    _, decode = CODECS[codec]
    while True:
        data = conn.recv_bytes()
        if data == b"stop":
            return
        decode(data)
        conn.send_bytes(b"ok")


def _zmq_echo(address: str, codec: str) -> None:
    import zmq

    _, decode = CODECS[codec]
    sock = zmq.Context().socket(zmq.PAIR)
    sock.connect(address)
    while True:
        data = sock.recv(copy=False).bytes
        if data == b"stop":
            return
        decode(data)
        sock.send(b"ok")


def measure(transport: str, codec: str, num_requests: int, messages: int) -> dict[str, Any]:
    encode, _ = CODECS[codec]
    batch = step_batch(num_requests)
    ctx = multiprocessing.get_context("spawn")
    if transport == "pipe":
        ours, theirs = ctx.Pipe(duplex=True)
        child = ctx.Process(target=_pipe_echo, args=(theirs, codec), daemon=True)
        child.start()
        send, recv = ours.send_bytes, ours.recv_bytes
    else:
        import zmq

        sock = zmq.Context().socket(zmq.PAIR)
        address = f"ipc:///tmp/aisp-ipc-bench-{time.monotonic_ns()}"
        sock.bind(address)
        child = ctx.Process(target=_zmq_echo, args=(address, codec), daemon=True)
        child.start()
        send, recv = sock.send, sock.recv
    size = len(encode(batch))
    times = []
    for i in range(WARMUP + messages):
        t0 = time.perf_counter()
        send(encode(batch))
        recv()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    send(b"stop")
    child.join(10)
    t_enc = time.perf_counter()
    for _ in range(200):
        encode(batch)
    encode_us = (time.perf_counter() - t_enc) / 200 * 1e6
    return {"transport": f"{codec}+{transport}", "requests": num_requests, "bytes": size,
            "round_trip_us_median": statistics.median(times) * 1e6,
            "round_trip_us_p90": sorted(times)[int(0.9 * len(times))] * 1e6,
            "encode_us": encode_us}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    cases = [("pipe", "msgspec"), ("pipe", "json"), ("pipe", "pickle")]
    try:
        import zmq  # noqa: F401
        cases.append(("zmq", "msgspec"))
    except ImportError:
        print("pyzmq is not installed: msgspec+zmq skipped", file=sys.stderr)
    rows = []
    for transport, codec in cases:
        rows.append(measure(transport, codec, a.requests, a.messages))
        r = rows[-1]
        print(f"{r['transport']:>14}: {r['bytes']:>7,} bytes, round trip median "
              f"{r['round_trip_us_median']:7.1f} us (p90 {r['round_trip_us_p90']:7.1f}), "
              f"encode {r['encode_us']:6.1f} us", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
