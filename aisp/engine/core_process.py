"""The engine core in a process of its own: `ProcessCore`, the client's side of it, and the
child's main.

Why a process: the core's Python (planning, bookkeeping, launching) and the server's (HTTP,
tokenization, detokenization, SSE framing) no longer take turns on one GIL, so the GPU waits
for neither. The core runs `run_core_loop` (aisp.engine.core) exactly as the in-process thread
does; only the transport differs.

Contract:
- `ProcessCore(config)` spawns the child (multiprocessing's 'spawn' context: a fresh
  interpreter, as CUDA requires), which builds the `LLMEngine` and answers with its
  `ModelInfo`, or with the error that stopped it, which is raised here as RuntimeError with the
  child's message (the CLI prints it before listening). The wait has no limit unless
  `start_timeout` is given (an 8B model with graph capture takes tens of seconds), but a child
  that dies while starting is noticed at once.
- The transport is one duplex `multiprocessing.connection` pipe carrying msgspec MessagePack
  (aisp.engine.core_messages): commands one way, one `CoreBatch` per step the other. Nothing
  pickled crosses it after the spawn (whose only argument is the encoded config).
- `send` never blocks the caller: a sender thread writes the commands. A reader thread waits on
  the pipe and on the process's sentinel together, so a child that dies (killed, out of
  memory, a crash in a kernel) is reported to `on_exit` with its exit code or signal at once.
- The child never outlives the server: it exits when the pipe reaches EOF (the parent is gone),
  it asks Linux to SIGKILL it when the parent dies (PR_SET_PDEATHSIG), it ignores SIGINT (a
  Ctrl-C reaches the whole process group; the server then stops it in order), and `join`
  terminates, then kills, a child that does not exit in time.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading

import msgspec

from aisp.engine.config import EngineConfig
from aisp.engine.core import Command
from aisp.engine.core_messages import decode_batch, decode_command, encode_batch, encode_command
from aisp.engine.engine import ModelInfo

__all__ = ["ProcessCore"]

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


class ProcessCore:
    """The client's handle on an engine-core process; see the module docstring."""

    def __init__(self, config: EngineConfig, start_timeout: float | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=core_main, name="aisp-engine-core", daemon=True,
                                    args=(msgspec.msgpack.encode(config), child_conn))
        self._process.start()
        child_conn.close()   # the child's end lives in the child only: its exit means EOF here
        self.pid: int | None = self._process.pid
        self._reader: threading.Thread | None = None
        self._exited = threading.Event()   # the reader has reaped the child (the only reaper)
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        try:
            self.model_info = self._wait_ready(start_timeout)
        except BaseException:
            self.join(5.0)
            raise

    def _wait_ready(self, timeout: float | None) -> ModelInfo:
        ready = multiprocessing.connection.wait([self._conn, self._process.sentinel], timeout)
        if not ready:
            raise RuntimeError(f"the engine core did not start within {timeout:g} s")
        if self._conn not in ready or not self._conn.poll():
            self._process.join(5.0)
            raise RuntimeError(f"the engine core process exited while starting "
                               f"({_exit_words(self._process.exitcode)}); see its log above")
        try:
            kind, body = msgspec.msgpack.decode(self._conn.recv_bytes(),
                                                type=tuple[str, msgspec.Raw])
        except EOFError:
            self._process.join(5.0)
            raise RuntimeError(f"the engine core process exited while starting "
                               f"({_exit_words(self._process.exitcode)})") from None
        if kind == "error":
            raise RuntimeError(msgspec.msgpack.decode(body, type=str))
        return msgspec.msgpack.decode(body, type=ModelInfo)

    def start(self, on_batch, on_exit) -> None:
        self._reader = threading.Thread(target=self._read, args=(on_batch, on_exit),
                                        name="aisp-core-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._write, name="aisp-core-writer", daemon=True).start()

    def send(self, command: Command) -> None:
        self._outbox.put(command)

    def _write(self) -> None:
        while (command := self._outbox.get()) is not None:
            try:
                self._conn.send_bytes(encode_command(command))
            except OSError:   # the child is gone; the reader reports why
                return

    def _read(self, on_batch, on_exit) -> None:
        reason = None
        try:
            while True:
                ready = multiprocessing.connection.wait([self._conn, self._process.sentinel])
                if self._conn in ready:
                    try:
                        data = self._conn.recv_bytes()
                    except (EOFError, OSError):
                        break
                    on_batch(decode_batch(data))
                elif not self._conn.poll():   # exited, and everything it sent has been read
                    break
        except Exception as e:   # a malformed message or a failing listener: the link is lost
            log.exception("reading from the engine core failed")
            reason = f"reading from the engine core failed: {e!r}"
        finally:
            self._outbox.put(None)
            self._process.join()   # it closed the pipe or died; `join` ends one that lingers
            self._exited.set()
            on_exit(reason or f"the engine core process (pid {self.pid}) exited "
                              f"({_exit_words(self._process.exitcode)})")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to exit; terminate, then kill, one that outstays `timeout`.
        Once the reader runs, it alone reaps the child (two threads waiting on one pid race)."""
        if self._wait_exit(timeout):
            return
        log.warning("the engine core did not exit within %s s; terminating it", timeout)
        self._process.terminate()
        if not self._wait_exit(5.0):
            self._process.kill()
            self._wait_exit(5.0)

    def _wait_exit(self, timeout: float | None) -> bool:
        if self._reader is None:
            self._process.join(timeout)
            return not self._process.is_alive()
        return self._exited.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._process.is_alive()


def _exit_words(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, even by SIGKILL (no orphan core)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass   # the pipe's EOF still stops the loop


def core_main(config_bytes: bytes, conn: multiprocessing.connection.Connection) -> None:
    """The child: build the engine, say ready (or why not), then serve the pipe."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s [core] %(name)s: %(message)s")
    if os.getppid() == 1:
        return   # the parent died before we could ask to die with it
    from aisp.engine.core import run_core_loop
    from aisp.engine.engine import LLMEngine

    try:
        engine = LLMEngine(msgspec.msgpack.decode(config_bytes, type=EngineConfig))
    except Exception as e:
        conn.send_bytes(msgspec.msgpack.encode(("error", str(e) or repr(e))))
        return
    conn.send_bytes(msgspec.msgpack.encode(("ready", engine.model_info)))

    def receive(block: bool) -> list[Command]:
        if block:
            conn.poll(None)
        commands = []
        while conn.poll():
            commands.append(decode_command(conn.recv_bytes()))   # EOFError: the parent is gone
        return commands

    run_core_loop(engine, receive, lambda batch: conn.send_bytes(encode_batch(batch)))
    conn.close()
