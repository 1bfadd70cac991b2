"""The wire between the front end and the engine-core process: typed MessagePack (msgspec).

Every message is one `Command` (front end -> core) or one `CoreBatch` (core -> front end),
encoded by msgspec from the dataclasses in aisp.engine.core and decoded straight back into
them, with their types checked on the way in: nothing is unpickled, so a message can only ever
become one of those dataclasses (a malformed one raises `msgspec.ValidationError`).

Why msgspec over pickle, JSON or hand-packed structs, and a pipe over ZeroMQ: measured by
`python -m aisp.engine.ipc_bench` (docs/results: the numbers), a step's batch of 256 outputs
costs tens of microseconds to encode, send, receive and decode this way, a small fraction of a
GPU step; pickle is forbidden across the boundary and JSON loses the types.

What crosses: a delta's token fields and the numbers the front end measures a request with; a
finished output's whole-output fields (prompt and output ids, text, metrics) are the front
end's to build and are not sent. `StepStats` travel without their per-request lists
(`scheduled`, `finished_request_ids`), which are for offline tools; the numbers Prometheus
needs are all there.
"""

from __future__ import annotations

import dataclasses

import msgspec

from aisp.engine.core import (AbortRequests, AddRequest, Command, CoreBatch, Shutdown,
                              StopRequests)
from aisp.engine.engine import RequestOutput, StepStats

__all__ = ["decode_batch", "decode_command", "encode_batch", "encode_command"]

_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(CoreBatch)
_COMMANDS = {AddRequest: "add", AbortRequests: "abort", StopRequests: "stop",
             Shutdown: "shutdown"}
_KINDS = {kind: cls for cls, kind in _COMMANDS.items()}


def encode_command(cmd: Command) -> bytes:
    # The kind travels beside the fields: two of the dataclasses have the same shape.
    return _encoder.encode((_COMMANDS[type(cmd)], cmd))


def decode_command(data: bytes) -> Command:
    kind, raw = msgspec.msgpack.decode(data, type=tuple[str, msgspec.Raw])
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise msgspec.ValidationError(f"unknown command {kind!r}") from None
    return msgspec.msgpack.decode(raw, type=cls)


def encode_batch(batch: CoreBatch) -> bytes:
    slim = dataclasses.replace(
        batch, outputs=tuple(_slim(o) for o in batch.outputs),
        stats=tuple(dataclasses.replace(s, scheduled=(), finished_request_ids=())
                    for s in batch.stats))
    return _encoder.encode(slim)


def decode_batch(data: bytes) -> CoreBatch:
    return _batch_decoder.decode(data)


def _slim(out: RequestOutput) -> RequestOutput:
    if not out.finished:
        return out
    return msgspec.structs.replace(out, prompt_token_ids=(), output_token_ids=(), text=None,
                                   metrics=None)
