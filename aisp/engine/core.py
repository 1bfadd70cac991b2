"""The engine core's busy loop: commands in, one message of outputs per step out.

The core deals in token ids only; text, stop strings and streams are the front end's
(aisp.engine.client, aisp.engine.output_processor). The same loop runs on a thread of the
front end's process (`InProcessCore` in aisp.engine.client: tests, notebooks) or as the main
loop of a process of its own (aisp.engine.core_process: `aisp serve`), so the two differ only
in how commands and batches travel.

Contract of `run_core_loop(engine, receive, emit)`:
- `receive(block)` returns the commands that arrived (with `block`, waits for at least one: an
  idle core burns no CPU); it raises EOFError when the front end is gone, which ends the loop.
- Each turn: apply every command (adds, aborts, stop-string finishes; `Shutdown` ends the
  loop), then `emit` one `CoreBatch` with the admissions and refusals if there were commands
  (so an HTTP layer can answer 400 before the next step ends, and an abort's freed blocks show),
  then, with work left, run one `engine.step()` and `emit` one `CoreBatch` with all of its
  outputs and step stats. Every batch carries the free KV blocks and unfinished requests after
  it.
- An add that the engine refuses (its ValueError with the numbers, or anything else it raises)
  comes back in `rejected` with the message; nothing else about the core changes.
- A step that raises: every live request is aborted and reported in `failed` with the error; if
  requests remain after that, the core cannot be trusted: the batch says `dead` and the loop
  ends. Otherwise it keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aisp.engine.engine import LLMEngine, RequestOutput, StepStats
from aisp.engine.sampling_params import SamplingParams

__all__ = ["AbortRequests", "AddRequest", "Command", "CoreBatch", "Shutdown", "StopRequests",
           "run_core_loop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams          # stop strings stripped: they are the front end's
    priority: int
    arrival_time: float             # time.monotonic() of the front end (one clock per host)


@dataclass(frozen=True)
class AbortRequests:
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class StopRequests:
    """Requests a stop string ended in the front end: (request id, stop string)."""

    stops: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Shutdown:
    pass


Command = AddRequest | AbortRequests | StopRequests | Shutdown


@dataclass(frozen=True)
class CoreBatch:
    """Everything the core says in one message."""

    outputs: tuple[RequestOutput, ...] = ()
    admitted: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()   # (request id, why)
    stats: tuple[StepStats, ...] = ()            # the steps finished by this step() call
    failed: tuple[str, ...] = ()                 # request ids a failed step took down
    error: str = ""                              # that step's error
    dead: bool = False                           # the core stopped: nothing more will come
    kv_free_blocks: int = 0                      # the core's state after this message
    num_unfinished: int = 0


def run_core_loop(engine: LLMEngine, receive: Callable[[bool], list[Command]],
                  emit: Callable[[CoreBatch], None]) -> None:
    """Serve commands until `Shutdown`, EOF from `receive`, or an unrecoverable step."""
    stats: list[StepStats] = []
    engine.step_listeners.append(stats.append)

    def send(**fields) -> None:
        emit(CoreBatch(kv_free_blocks=engine.block_manager.num_free_blocks,
                       num_unfinished=len(engine.unfinished_request_ids()), **fields))
    while True:
        try:
            commands = receive(not engine.has_unfinished_requests())
        except EOFError:
            log.info("the front end went away; the engine core stops")
            return
        admitted: list[str] = []
        rejected: list[tuple[str, str]] = []
        for cmd in commands:
            if isinstance(cmd, Shutdown):
                return
            if isinstance(cmd, AddRequest):
                try:
                    engine.add_request(cmd.prompt_token_ids, cmd.params, cmd.request_id,
                                       cmd.priority, cmd.arrival_time)
                    admitted.append(cmd.request_id)
                except Exception as e:   # ValueError: admission; anything else: said, not fatal
                    rejected.append((cmd.request_id, str(e) or repr(e)))
            elif isinstance(cmd, AbortRequests):
                engine.abort(cmd.request_ids)
            else:
                engine.stop_requests(cmd.stops)
        if commands:
            send(admitted=tuple(admitted), rejected=tuple(rejected))
        if not engine.has_unfinished_requests():
            continue
        try:
            outputs = engine.step()
        except Exception as e:
            stats.clear()
            live = engine.unfinished_request_ids()
            log.exception("engine step failed; failing %d in-flight requests", len(live))
            error = f"the engine step failed: {e!r}"
            try:   # free the blocks first, so a consumer that sees the error sees them free
                engine.abort(live)
                dead = engine.has_unfinished_requests()
                if dead:
                    error += "; requests remain after aborting every in-flight one"
            except Exception as e2:
                log.exception("aborting after a failed step failed too")
                dead, error = True, error + f"; aborting its requests failed too: {e2!r}"
            send(failed=tuple(live), error=error, dead=dead)
            if dead:
                return
            continue
        send(outputs=tuple(outputs), stats=tuple(stats))
        stats.clear()
