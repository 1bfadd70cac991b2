"""`aisp loadtest`: the load tester's command line. `register(app)` adds it to a Typer app.

Contract: every flag is honoured or rejected. Flags that do not apply to the chosen workload or
arrival mode are errors (exit 2) naming the flag and the fix, as are conflicting ones (e.g.
--concurrency with --rate). Exit status: 0 after a run that measured at least one successful
request, 1 when the server is unavailable or no measured request succeeded, 2 for bad flags.
Artifacts go to --out (default artifacts/loadtest_<time>/). Lengths and the token-id range
the user did not set are fitted to the server's model card (aisp/loadtest/fit.py) and the
report says what was fitted; a run whose first requests are all refused stops early (exit 1).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from aisp.loadtest.config import (ConfigError, LengthSpec, LoadTestConfig, SweepConfig,
                                  WorkloadConfig, check_sweepable)

DEFAULT_VOCAB_SIZE = 32000
_DEFAULTS = {  # workload -> (input_len, output_len) when the flags are not given (vLLM's)
    "random": ("1024", "128"),
    "shared-prefix": ("256", "128"),
    "file": (None, None),
}


def _given(**flags: object) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k, v in flags.items()
            if v is not None and v is not False]


def build_configs(
    *, url: str, model: Optional[str], endpoint: str, api_key: Optional[str], workload: str,
    dataset: Optional[Path], input_len: Optional[str], output_len: Optional[str],
    range_ratio: Optional[float], num_prefixes: Optional[int], prefix_len: Optional[int],
    vocab_size: Optional[int], token_id_min: int, concurrency: Optional[int], rate: Optional[float],
    arrival: Optional[str], burstiness: Optional[float], sweep_rates: Optional[str],
    sweep_search: Optional[str], sweep_steps: Optional[int], slo_attainment: Optional[float],
    duration: float, warmup: float, drain_timeout: float, request_timeout: float,
    max_connections: Optional[int], slo_ttft_ms: Optional[float], slo_tpot_ms: Optional[float],
    stability_band: float, slices: int, min_slice_requests: int, seed: int, no_salt: bool,
    salt_nonce: Optional[int], temperature: float, ignore_eos: bool,
) -> tuple[LoadTestConfig, SweepConfig | None]:
    """Flags -> configs; raises ConfigError for anything that does not fit together."""
    if workload not in _DEFAULTS:
        raise ConfigError(f"--workload '{workload}' is unknown; use random, file or shared-prefix")
    if workload != "shared-prefix" and (extra := _given(num_prefixes=num_prefixes,
                                                        prefix_len=prefix_len)):
        raise ConfigError(f"{', '.join(extra)} only shape --workload shared-prefix, not "
                          f"'{workload}'; drop them")
    d_in, d_out = _DEFAULTS[workload]
    if workload == "file" and range_ratio and output_len is None:
        raise ConfigError(f"--range-ratio {range_ratio} varies --input-len/--output-len, but the "
                          f"file workload takes its lengths from the dataset; drop it or give "
                          f"--output-len")
    ratio = range_ratio or 0.0
    in_text, out_text = input_len or d_in, output_len or d_out
    in_spec = LengthSpec.parse(in_text, ratio) if in_text else None
    out_spec = LengthSpec.parse(out_text, ratio) if out_text else None
    if workload == "file" and input_len is not None:
        raise ConfigError(f"--input-len {input_len} does not apply to --workload file (prompts "
                          f"come from the dataset); drop it")
    wl = WorkloadConfig(
        kind=workload, input_len=in_spec, output_len=out_spec,  # type: ignore[arg-type]
        dataset_path=str(dataset) if dataset is not None else None,
        num_prefixes=num_prefixes if num_prefixes is not None else 10,
        prefix_len=prefix_len if prefix_len is not None else 256,
        vocab_size=vocab_size if vocab_size is not None else DEFAULT_VOCAB_SIZE,
        token_id_min=token_id_min, salt=not no_salt, salt_nonce=salt_nonce,
        defaulted={name for name, flag in (("input_len", input_len), ("output_len", output_len),
                                           ("prefix_len", prefix_len),
                                           ("vocab_size", vocab_size)) if flag is None})

    sweep = None
    if sweep_rates is not None or sweep_search is not None:
        if sweep_rates is not None and sweep_search is not None:
            raise ConfigError("--sweep-rates and --sweep-search both given; pick one")
        if rate is not None or concurrency is not None:
            raise ConfigError("a sweep sets the rate itself; drop --rate/--concurrency")
        kw = {"slo_attainment": slo_attainment} if slo_attainment is not None else {}
        if sweep_rates is not None:
            if sweep_steps is not None:
                raise ConfigError("--sweep-steps shapes --sweep-search, not --sweep-rates; drop it")
            sweep = SweepConfig.parse_rates(sweep_rates, **kw)
            rate = sweep.rates[0]
        else:
            if sweep_steps is not None:
                kw["search_steps"] = sweep_steps
            sweep = SweepConfig.parse_search(sweep_search or "", **kw)
            rate = sweep.search_low
    elif extra := _given(sweep_steps=sweep_steps, slo_attainment=slo_attainment):
        raise ConfigError(f"{', '.join(extra)} only apply to a sweep (--sweep-rates or "
                          f"--sweep-search); drop them")
    cfg = LoadTestConfig(
        url=url, model=model, endpoint=endpoint, api_key=api_key,  # type: ignore[arg-type]
        workload=wl, concurrency=concurrency, rate=rate,
        arrival=arrival or "poisson",  # type: ignore[arg-type]
        burstiness=1.0 if burstiness is None else burstiness,
        duration_s=duration, warmup_s=warmup, drain_timeout_s=drain_timeout,
        request_timeout_s=request_timeout, max_connections=max_connections,
        slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, stability_band=stability_band,
        num_slices=slices, min_slice_requests=min_slice_requests, seed=seed,
        temperature=temperature, ignore_eos=ignore_eos)
    if sweep is not None:
        check_sweepable(cfg)
    return cfg, sweep


def loadtest_command(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Server base URL."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: the first "
                                        "that GET /v1/models lists)."),
    endpoint: str = typer.Option("completions", "--endpoint", help="completions or chat."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Sent as Authorization: Bearer."),
    workload: str = typer.Option("random", "--workload", help="random, file or shared-prefix."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="JSON/JSONL prompts "
                                           "(ShareGPT conversations or {prompt, output_len})."),
    input_len: Optional[str] = typer.Option(None, "--input-len", help="Prompt tokens: N or "
                                            "LOW:HIGH (shared-prefix: the unique suffix). "
                                            "Default 1024 (random), 256 (shared-prefix); "
                                            "defaults shrink to fit the server's "
                                            "max_model_len."),
    output_len: Optional[str] = typer.Option(None, "--output-len", help="max_tokens: N or "
                                             "LOW:HIGH. Default 128; file: the replies' lengths."),
    range_ratio: Optional[float] = typer.Option(None, "--range-ratio", help="Draw lengths "
                                                "uniformly in mean*(1-r)..mean*(1+r)."),
    num_prefixes: Optional[int] = typer.Option(None, "--num-prefixes", help="shared-prefix "
                                               "groups (default 10)."),
    prefix_len: Optional[int] = typer.Option(None, "--prefix-len", help="Shared prefix tokens "
                                             "(default 256)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Random token ids are < "
                                             "this. Default: the server's vocab_size if its "
                                             "model card has one, else 32000."),
    token_id_min: int = typer.Option(0, "--token-id-min", help="Random token ids are >= this."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Closed loop: N "
                                              "workers, each sends when its last request ends."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: requests per second."),
    arrival: Optional[str] = typer.Option(None, "--arrival", help="poisson (default) or "
                                          "constant (with --rate)."),
    burstiness: Optional[float] = typer.Option(None, "--burstiness", help="Gamma shape of "
                                               "inter-arrival gaps: 1 = Poisson, <1 burstier."),
    sweep_rates: Optional[str] = typer.Option(None, "--sweep-rates", help="Run each rate "
                                              "(r1,r2,...) and report which meet the SLOs."),
    sweep_search: Optional[str] = typer.Option(None, "--sweep-search", help="LOW:HIGH: bisect "
                                               "for the highest rate meeting the SLOs."),
    sweep_steps: Optional[int] = typer.Option(None, "--sweep-steps", help="Bisection steps of "
                                              "--sweep-search (default 4)."),
    slo_attainment: Optional[float] = typer.Option(None, "--slo-attainment", help="Fraction of "
                                                   "requests that must meet the SLOs in a sweep "
                                                   "(default 0.9)."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of sending."),
    warmup: float = typer.Option(0.0, "--warmup", help="Requests sent in the first SECONDS are "
                                 "excluded from all statistics."),
    drain_timeout: float = typer.Option(60.0, "--drain-timeout", help="Seconds to wait for "
                                        "in-flight requests after sending stops."),
    request_timeout: float = typer.Option(300.0, "--request-timeout", help="Per-request timeout."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", help="Connection "
                                                  "limit (default: concurrency, or 1024)."),
    slo_ttft_ms: Optional[float] = typer.Option(None, "--slo-ttft-ms", help="Goodput: TTFT SLO."),
    slo_tpot_ms: Optional[float] = typer.Option(None, "--slo-tpot-ms", help="Goodput: TPOT SLO."),
    stability_band: float = typer.Option(0.25, "--stability-band", help="Slice medians must be "
                                         "within +-this fraction of the overall median."),
    slices: int = typer.Option(4, "--slices", help="K time slices for the stability verdict."),
    min_slice_requests: int = typer.Option(5, "--min-slice-requests", help="A slice is judged "
                                           "only with at least this many requests."),
    seed: int = typer.Option(0, "--seed", help="Seeds prompts, lengths and arrivals."),
    no_salt: bool = typer.Option(False, "--no-salt", help="Do not salt prompts per run."),
    salt_nonce: Optional[int] = typer.Option(None, "--salt-nonce", help="Reuse a run's salt "
                                             "(results.json) to resend its exact prompts."),
    temperature: float = typer.Option(0.0, "--temperature"),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="Ask the server "
                                    "for exactly max_tokens tokens (vLLM's ignore_eos)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Artifacts folder (default "
                                       "artifacts/loadtest_<time>/)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Load-test an OpenAI-compatible server (ours, vLLM, SGLang): TTFT, TPOT, ITL, goodput."""
    # Imported here so that registering the command costs nothing at `aisp` start-up.
    from aisp.loadtest.artifacts import (default_out_dir, write_results,
                                         write_sweep_results)
    from aisp.loadtest.probe import ServerUnavailable
    from aisp.loadtest.report import print_report, print_sweep_report
    from aisp.loadtest.runner import run_load
    from aisp.loadtest.sweep import run_sweep

    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        cfg, sweep = build_configs(
            url=url, model=model, endpoint=endpoint, api_key=api_key, workload=workload,
            dataset=dataset, input_len=input_len, output_len=output_len, range_ratio=range_ratio,
            num_prefixes=num_prefixes, prefix_len=prefix_len, vocab_size=vocab_size,
            token_id_min=token_id_min, concurrency=concurrency, rate=rate, arrival=arrival,
            burstiness=burstiness, sweep_rates=sweep_rates, sweep_search=sweep_search,
            sweep_steps=sweep_steps, slo_attainment=slo_attainment, duration=duration,
            warmup=warmup, drain_timeout=drain_timeout, request_timeout=request_timeout,
            max_connections=max_connections, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms,
            stability_band=stability_band, slices=slices, min_slice_requests=min_slice_requests,
            seed=seed, no_salt=no_salt, salt_nonce=salt_nonce, temperature=temperature,
            ignore_eos=ignore_eos)
        out_dir = out or default_out_dir()
        if sweep is None:
            result = asyncio.run(run_load(cfg, progress=not no_progress, console=console))
            print_report(result, console)
            paths = write_results(result, out_dir, plots=not no_plots)
            ok = result.summary.num_ok > 0
        else:
            sres = asyncio.run(run_sweep(cfg, sweep, progress=not no_progress, console=console))
            for p in sres.points:
                console.print(f"[bold]rate {p.rate:g} req/s[/]")
                print_report(p.result, console)
            print_sweep_report(sres, console)
            paths = write_sweep_results(sres, out_dir, plots=not no_plots)
            ok = any(p.result.summary.num_ok > 0 for p in sres.points)
    except ConfigError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except ServerUnavailable as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    main = paths.get("results", paths.get("sweep"))
    console.print(escape(f"artifacts: {out_dir} ({len(paths)} files; summary in {main})"),
                  highlight=False)
    if not ok:
        console.print("[red]no measured request succeeded[/]")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `loadtest` to `app` (aisp/cli.py calls this)."""
    app.command("loadtest")(loadtest_command)
