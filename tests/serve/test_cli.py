"""`aisp serve` through a Typer app of our own that calls `register`: the options, and SIGTERM
in a real subprocess (admission stops, the in-flight stream completes, exit code 0, and the
engine-core process it started is gone too)."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import typer
from typer.testing import CliRunner

from aisp.model.presets import PRESETS, save_synthetic
from aisp.model.tokenizer import BYTE_VOCAB_SIZE
from aisp.serve.cli import register
from tests.serve.client import events, fold_chunks, process_running, run

REPO = Path(__file__).resolve().parents[2]
# A group with a callback, so `serve` stays a subcommand as it will be under `aisp`.
APP_SCRIPT = ("import typer; from aisp.serve.cli import register; app = typer.Typer(); "
              "app.callback()(lambda: None); register(app); app()")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_serve_help_lists_the_options():
    r = CliRunner().invoke(_app(), ["serve", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for flag in ("--model", "--host", "--port", "--api-key", "--served-model-name", "--device",
                 "--dtype", "--max-num-seqs", "--max-num-batched-tokens", "--max-model-len",
                 "--block-size", "--num-kv-blocks", "--no-prefix-caching", "--attention-kernels",
                 "--cuda-graphs", "--async-scheduling"):
        assert flag in r.output, flag
    assert "127.0.0.1" in r.output


def test_serve_rejects_a_bad_engine_option():
    r = CliRunner().invoke(_app(), ["serve", "--model", "tiny", "--device", "cpu",
                                    "--attention-kernels", "fast"])
    assert r.exit_code == 2 and "attention_kernels 'fast' unknown" in r.output


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that this test already listens on: a server that got past its
    configuration fails at once with "cannot listen" instead of serving, so these tests can
    never hang, and the assertions tell a configuration error (wanted) from a listen error (the
    server got that far)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield ["--host", "127.0.0.1", "--port", str(sock.getsockname()[1])]


def test_serve_refuses_what_cannot_run_before_it_listens(monkeypatch, taken_port):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # a user's CPU, not the test suite's
    r = CliRunner().invoke(_app(), ["serve", "--model", "tiny", "--device", "cpu",
                                    "--attention-kernels", "triton", *taken_port])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    out = " ".join(r.output.split())
    assert "attention_kernels='triton' needs a CUDA device" in out, r.output
    assert "on a CPU use 'torch' or 'auto'" in out and "cannot listen" not in out
    r = CliRunner().invoke(_app(), ["serve", "--model", "tiny", "--device", "tpu", *taken_port])
    assert r.exit_code == 2, r.output
    assert "device 'tpu' is not a device aisp runs on; valid: cpu, cuda, cuda:N" in r.output


@pytest.mark.parametrize("name,damage,words", [
    ("config.json", lambda p: p.write_text("{oops"), "is not valid JSON"),
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000]),
     "is not a readable safetensors file"),
    ("tokenizer.json", lambda p: p.write_text("{"), "cannot be read by the tokenizers library"),
], ids=["config-json", "truncated-weights", "tokenizer-json"])
def test_serve_names_a_damaged_model_file(tmp_path, name, damage, words, taken_port):
    folder = save_synthetic("tiny", tmp_path / "m", seed=0)
    damage(folder / name)
    r = CliRunner().invoke(_app(), ["serve", "--model", str(folder), "--device", "cpu",
                                    *taken_port])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    out = " ".join(r.output.split())
    assert str(folder / name) in out and words in out and "cannot listen" not in out, r.output


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """Byte-vocab tiny Llama with a 4,096-token context, for a stream that lasts seconds."""
    config = PRESETS["tiny"].replace(vocab_size=BYTE_VOCAB_SIZE, max_position_embeddings=4096)
    return save_synthetic(config, tmp_path_factory.mktemp("long-tiny"), seed=0)


def _reader(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:   # keep draining, so the child never blocks on a full pipe
        lines.put(line)


def test_sigterm_drains_in_flight_requests_and_exits_zero(long_model):
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", APP_SCRIPT, "serve", "--model", str(long_model),
         "--port", "0", "--device", "cpu", "--num-kv-blocks", "512"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "AISP_API_KEY"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            output.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", output[-1])
            url = match and match.group(1)
        result = run(_drain_scenario(proc, url), timeout=150)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        while not lines.empty():
            output.append(lines.get())
    log = "".join(output)
    core_pid = int(re.search(r"engine core pid (\d+)", log).group(1))
    deadline = time.monotonic() + 10
    while process_running(core_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_running(core_pid), f"the engine core (pid {core_pid}) outlived the server"
    folded, late_statuses = result
    assert folded["finish_reason"] == "length", log
    assert folded["usage"]["completion_tokens"] == 1500, log
    assert late_statuses and all(s in (503, "refused") for s in late_statuses), late_statuses
    assert "draining 1 in-flight request" in log and "stopped" in log, log


async def _drain_scenario(proc: subprocess.Popen, url: str):
    body = {"prompt": "keep going", "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    late_statuses: list[int | str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async with s.post(url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            raw = [await resp.content.readline()]   # the first token has arrived
            proc.send_signal(signal.SIGTERM)
            late_statuses.append(await _probe(s, url + "/health", None))
            late_statuses.append(await _probe(s, url + "/v1/completions",
                                              {"prompt": "late", "max_tokens": 2}))
            raw += [line async for line in resp.content]
    lines = b"".join(raw).decode().split("\n")
    return fold_chunks(events(lines), chat=False), late_statuses


async def _probe(s: aiohttp.ClientSession, url: str, body) -> int | str:
    """Status once the server has seen the signal: 503 while draining, or refused once gone."""
    deadline = time.monotonic() + 10
    while True:
        try:
            method = s.post(url, json=body) if body is not None else s.get(url)
            async with method as r:
                if r.status == 503:
                    error = (await r.json())["error"]
                    assert "shutting down" in error["message"] and error["param"] is None
                    return 503
                if time.monotonic() > deadline:
                    return r.status   # the signal never took effect: the caller's assert fails
        except aiohttp.ClientConnectorError:
            return "refused"
        await asyncio.sleep(0.01)


def test_a_killed_server_takes_its_engine_core_with_it(long_model):
    """SIGKILL leaves the server no chance to stop its core: the core must still not survive
    it (Linux's parent-death signal, and EOF on the pipe)."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", APP_SCRIPT, "serve", "--model", str(long_model),
         "--port", "0", "--device", "cpu", "--num-kv-blocks", "64"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
    try:
        deadline, core_pid = time.monotonic() + 60, None
        while core_pid is None:
            match = re.search(r"engine core pid (\d+)",
                              lines.get(timeout=max(0.1, deadline - time.monotonic())))
            core_pid = match and int(match.group(1))
        assert process_running(core_pid)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while process_running(core_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_running(core_pid), "the engine core outlived a killed server"
    finally:
        if proc.poll() is None:
            proc.kill()
