"""The README's load-test example against a real `aisp serve` of the tiny preset on 127.0.0.1:
its defaults (1024-token prompts, ids < 32,000) do not fit the model (context 512, vocabulary
512), so the load tester must fit them to the model card, and a run the server refuses
(`--model wrong`, explicit prompts longer than the context) must stop early and exit 1."""

import json
import time

import pytest
import typer
from typer.testing import CliRunner

from aisp.engine.config import EngineConfig
from aisp.loadtest.cli import register
from aisp.loadtest.runner import ABORT_AFTER_CLIENT_ERRORS
from aisp.serve.server import start_server


@pytest.fixture(scope="module")
def tiny_server():
    # Served as `aisp serve --model tiny` names it; KV for 8 requests of 512 tokens at once.
    srv = start_server(EngineConfig(model="tiny", device="cpu", num_kv_blocks=288))
    yield srv
    srv.stop(drain=False, timeout=5)


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)
    a.command("other")(lambda: None)   # keeps `loadtest` a subcommand
    return a


def loadtest(app, *args):
    return CliRunner().invoke(app, ["loadtest", *args, "--no-progress", "--no-plots"])


def test_the_readme_example_fits_its_defaults_and_succeeds(app, tiny_server, tmp_path):
    # No warm-up: on a busy 2-core machine the first eight 455-token prompts can take seconds,
    # and a request counts only if it was sent after the warm-up.
    r = loadtest(app, "--url", tiny_server.url, "--concurrency", "8", "--duration", "4",
                 "--warmup", "0", "--out", str(tmp_path))
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "max_model_len of 512 tokens" in text and "[0, 512)" in text   # said what it fitted
    data = json.loads((tmp_path / "results.json").read_text())
    s = data["summary"]
    assert s["num_ok"] > 0 and s["num_failed"] == 0 and s["errors"] == {}, s
    w = data["config"]["workload"]
    assert (w["input_len"], w["output_len"], w["vocab_size"]) == ("455", "56", 512)
    assert len(data["fitted"]) == 2 and data["stopped_early"] is None
    assert s["num_output_tokens"] == 56 * s["num_ok"]   # ignore_eos: exactly max_tokens each


@pytest.mark.parametrize("args, status, words", [
    (["--model", "wrong"], "404", "model 'wrong' does not exist; this server serves 'tiny'"),
    (["--input-len", "600"], "400", "the prompt has 600 tokens"),
])
def test_a_run_the_server_refuses_stops_early_with_its_message(app, tiny_server, tmp_path, args,
                                                               status, words):
    started = time.monotonic()
    r = loadtest(app, "--url", tiny_server.url, "--concurrency", "8", "--duration", "60",
                 "--out", str(tmp_path), *args)
    assert time.monotonic() - started < 20   # not the whole minute
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert f"the first {ABORT_AFTER_CLIENT_ERRORS} requests all got HTTP {status}" in text
    assert words in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"]["num_ok"] == 0 and words in data["stopped_early"]
