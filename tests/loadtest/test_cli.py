"""`aisp loadtest` through a small Typer app of our own that calls `register`."""

import json

import pytest
import typer
from typer.testing import CliRunner

from aisp.loadtest.cli import build_configs, register

from .fake_server import FakeServer, FakeServerConfig, unused_port


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)

    @a.command("other")  # a second command, so Typer keeps `loadtest` as a subcommand
    def other() -> None:
        pass

    return a


def invoke(app, *args):
    return CliRunner().invoke(app, ["loadtest", *args])


@pytest.mark.parametrize("args, message", [
    ([], "neither of concurrency and rate"),
    (["--concurrency", "2", "--rate", "3"], "both of concurrency and rate"),
    (["--concurrency", "2", "--burstiness", "0.5"], "closed loop"),
    (["--concurrency", "2", "--prefix-len", "64"], "--prefix-len only shape"),
    (["--concurrency", "2", "--workload", "file"], "needs a dataset"),
    (["--concurrency", "2", "--dataset", "x.json"], "only read by the 'file'"),
    (["--rate", "2", "--sweep-rates", "1,2", "--slo-ttft-ms", "100"], "drop --rate"),
    (["--sweep-rates", "1,2"], "judges each rate by its SLOs"),
    (["--concurrency", "2", "--sweep-steps", "3"], "only apply to a sweep"),
    (["--concurrency", "2", "--input-len", "5:2"], "is empty"),
    (["--concurrency", "2", "--endpoint", "chat"], "token-id prompts"),
    (["--concurrency", "2", "--warmup", "70"], "shorter than the duration"),
    (["--concurrency", "2", "--no-salt", "--salt-nonce", "3"], "salting is off"),
])
def test_conflicting_or_missing_flags_exit_2(app, args, message):
    r = invoke(app, "--url", "http://127.0.0.1:9", *args)
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and message in " ".join(r.output.split()), r.output


def test_a_real_short_run_writes_artifacts(app, tmp_path):
    with FakeServer(FakeServerConfig(first_token_delay_s=0.02, token_delay_s=0.01)) as srv:
        out = tmp_path / "run"
        r = invoke(app, "--url", srv.url, "--concurrency", "2", "--duration", "0.8",
                   "--warmup", "0.2", "--input-len", "12", "--output-len", "4", "--slices", "2",
                   "--slo-ttft-ms", "200", "--vocab-size", "1000", "--no-ignore-eos",
                   "--seed", "3", "--out", str(out))  # with the progress bar
        assert r.exit_code == 0, r.output
        assert "ignore_eos" not in srv.stats.bodies[0]
        assert len(srv.stats.bodies[0]["prompt"]) == 12
    assert "latency (ms" in r.output and "goodput" in r.output
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["concurrency"] == 2 and data["config"]["ignore_eos"] is False
    assert data["config"]["workload"]["input_len"] == "12" and data["config"]["seed"] == 3
    assert data["summary"]["num_ok"] > 0 and data["model"] == "fake-model"
    assert {p.name for p in out.iterdir()} == {"results.json", "requests.csv", "latency_cdf.png",
                                               "ttft_tpot_over_time.png",
                                               "throughput_over_time.png"}


def test_unavailable_server_exits_1(app):
    r = invoke(app, "--url", f"http://127.0.0.1:{unused_port()}", "--concurrency", "1",
               "--duration", "1",
               "--no-progress")
    assert r.exit_code == 1 and "no server answers" in " ".join(r.output.split())


def test_sweep_flags_build_an_open_loop_base_config(app):
    r = invoke(app, "--sweep-search", "2:16", "--sweep-steps", "3", "--slo-attainment", "0.95")
    assert r.exit_code == 2 and "judges each rate by its SLOs" in " ".join(r.output.split())
    flags = {p.name: p.default for p in
             typer.main.get_command(app).commands["loadtest"].params  # every CLI default
             if p.name not in ("out", "no_plots", "no_progress")}
    flags.update(sweep_search="2:16", sweep_steps=3, slo_attainment=0.95, slo_tpot_ms=50.0,
                 range_ratio=0.5, input_len="100")
    cfg, sweep = build_configs(**flags)
    assert sweep.search_low == 2 and sweep.search_high == 16 and sweep.search_steps == 3
    assert sweep.slo_attainment == 0.95 and cfg.rate == 2 and cfg.concurrency is None
    assert (cfg.workload.input_len.low, cfg.workload.input_len.high) == (50, 150)
    assert (cfg.workload.output_len.low, cfg.workload.output_len.high) == (64, 192)
