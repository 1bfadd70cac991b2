"""The `aisp` command line (Typer + rich): `aisp hw`, `aisp bench list-targets`, `aisp bench run`.

Every flag is honoured or rejected; none is silently ignored. `ch16/compare.py` is this same
`bench run` with the targets defaulting to the whole chapter.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aisp.engine_options import COMPILE_OPTION, QUANTIZATION_OPTION

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="aisp: measure which inference optimizations pay off on this hardware.")
bench_app = typer.Typer(no_args_is_help=True, help="Discover and run baseline/optimized pairs.")
app.add_typer(bench_app, name="bench")
# Wide enough for the results table when output goes to a file or CI log (no terminal width).
console = Console(width=None if sys.stdout.isatty() else 150)


def _error(message: Any) -> None:
    """Print a user error. The text is escaped: rich would read 'flash_sdp[b1_s256]' as markup
    and print 'flash_sdp'."""
    console.print(f"[red]error:[/] {escape(str(message))}", highlight=False)


@app.command("hw")
def hw_command(
    remeasure: bool = typer.Option(False, "--remeasure", help="Measure the ceilings again "
                                   "instead of using the cached values."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                         "available)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the device, its capabilities, versions and measured ceilings."""
    from aisp.hardware import DeviceError, ceilings, detect

    try:
        info = detect(device)
    except DeviceError as e:
        _error(e)
        raise typer.Exit(2)
    ceil = ceilings(info, remeasure=remeasure)
    if as_json:
        console.print_json(json.dumps({"hardware": info.to_dict(), "ceilings": ceil.to_dict()}))
        return
    t = Table(title=escape(f"hardware key: {info.key}"), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    # Table cells are markup too: escaped, so a value such as a list prints as it is.
    for k, v in info.to_dict().items():
        if k != "capabilities":
            t.add_row(escape(k), escape(str(v)))
    t.add_row("capabilities", escape(", ".join(k for k, v in info.capabilities.__dict__.items()
                                               if v) or "none"))
    t.add_row("copy bandwidth", f"{ceil.copy_bytes_per_s / 1e9:,.1f} GB/s (read + write, measured)")
    t.add_row("matmul", f"{ceil.matmul_flops_per_s / 1e12:,.2f} TFLOP/s {ceil.matmul_dtype} "
                        f"(measured {ceil.measured_at})")
    console.print(t)


@bench_app.command("list-targets")
def list_targets(
    chapter: Optional[str] = typer.Option(None, "--chapter", help="Only this chapter (e.g. ch16)."),
) -> None:
    """List the pairs that `bench run --targets` can take, one per line.

    A pair is baseline_<name>.py with optimized_<name>.py in a chapter folder (ch16, ...). A
    further optimized_<name>_<suffix>.py is a variant: another optimized implementation measured
    against the same baseline, with a row of its own. A pair's variants, when it has any, are
    listed after it.
    """
    from aisp.harness.discovery import TargetError, chapters, discover_pairs

    try:
        names = [chapter] if chapter else chapters()
        for ch in names:
            for pair in discover_pairs(ch):
                variants = [pair.variant_name(p) for p in pair.optimized[1:]]
                extra = f"  (variants: {', '.join(variants)})" if variants else ""
                console.print(f"{pair.target}{extra}", highlight=False)
    except TargetError as e:
        _error(e)
        raise typer.Exit(2)


def _check_output_file(path: Path, flag: str) -> None:
    """Fail before the work, not after it: `path` must be a file we can write; its folder is
    made now. Raises ValueError naming the flag, the path and the fix."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path, e.g. "
                         f"{path / 'results.json'}")
    _prepare_output_dir(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is not writable; choose another path")


def _prepare_output_dir(folder: Path, flag: str) -> None:
    """Make `folder` (and its parents) or raise ValueError saying why it cannot be."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag}: the folder {folder} cannot be made because {existing} is a "
                         f"file; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag}: cannot make the folder {folder} ({e.strerror}); choose another "
                         f"path") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: the folder {folder} is not writable; choose another path")


class _RichProgress:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def side_started(self, description: str, total: int) -> None:
        self.task = self.progress.add_task(description, total=total)

    def sample_done(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def side_finished(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


@bench_app.command("run")
def bench_run(
    targets: str = typer.Option(..., "--targets", help="ch16, ch16:flash_sdp or "
                                "ch16:flash_sdp,paged_attention."),
    profile: str = typer.Option("none", "--profile", help="none | minimal | full."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1,
                                             help="Timed runs per side (default: each target's)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0,
                                         help="Untimed runs before timing (default: each target's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results JSON here."),
    update_expectations: bool = typer.Option(False, "--update-expectations",
                                             help="Rewrite expectations_<hw>.json from the "
                                                  "verified rows of this run."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Input seed (default: a fresh one, "
                                       "printed and recorded as seed_used in results.json)."),
    cold_l2: bool = typer.Option(False, "--cold-l2", help="Flush the GPU L2 before every sample "
                                 "(a GPU only: on the CPU it is reported as not applied)."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir",
                                       help="Where the run folder (results, report, profiles) goes."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda."),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression",
                                            help="Exit 3 when a row regressed against "
                                                 "expectations (or is inconclusive: see below)."),
    inconclusive_fails: bool = typer.Option(
        True, "--inconclusive-fails/--inconclusive-passes",
        help="With --fail-on-regression: whether a row whose own noise exceeds its expectation's "
             "tolerance (verdict 'inconclusive') also exits 3. Default: it does; a gate that "
             "could not tell has not passed."),
) -> None:
    """Run pairs: time both sides, verify outputs, compare with expectations, write artifacts."""
    from aisp.hardware import ceilings, detect
    from aisp.harness import expectations as exp
    from aisp.harness.discovery import TargetError, resolve_targets
    from aisp.harness.provenance import provenance
    from aisp.harness.report import (build_results, render_profile_summaries, render_table,
                                     run_dir_for, write_artifacts)
    from aisp.harness.runner import RunOptions, run_pairs

    try:
        info = detect(device)   # an unknown or absent device is a DeviceError (ValueError)
        if device:
            os.environ["AISP_DEVICE"] = device  # benchmarks call detect() themselves
        pairs = resolve_targets(targets)
        run_dir = run_dir_for(artifacts_dir, targets)
        options = RunOptions(profile=profile, iterations=iterations, warmup=warmup, seed=seed,
                             cold_l2=cold_l2, artifacts_dir=run_dir).seeded()
        # Both outputs are checked (and their folders made) now, not after the whole run.
        _prepare_output_dir(artifacts_dir, "--artifacts-dir")
        if json_path:
            _check_output_file(json_path, "--json")
    except (TargetError, ValueError) as e:
        _error(e)
        raise typer.Exit(2)
    console.print(f"[bold]{escape(info.name)}[/] (key [cyan]{escape(info.key)}[/]); measuring "
                  f"ceilings if not cached...", highlight=False)
    how = "drawn" if options.seed_drawn else "from --seed"
    console.print(f"seed {options.seed} ({how}; rerun with --seed {options.seed})",
                  highlight=False)
    cold_applied, cold_reason = options.cold_l2_applied(info.device)
    if cold_l2 and not cold_applied:
        console.print(f"[yellow]warning:[/] --cold-l2 is not applied: {escape(cold_reason)} "
                      f"(recorded as cold_l2_applied: false)", highlight=False)
    ceil = ceilings(info)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        try:
            rows = run_pairs(pairs, info, ceil, options, progress=_RichProgress(progress))
        except exp.ExpectationsError as e:
            _error(e)
            raise typer.Exit(2)
    prov = provenance(info)
    results = build_results(rows, info, ceil, options, prov, targets)
    paths = write_artifacts(results, run_dir)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    for t in render_profile_summaries(results):
        console.print(t)
    if profile == "full":
        shown = set()
        for row in results["rows"]:
            prof = row["optimized"].get("profile") or {}
            for cmd in prof.get("external_commands", []):
                if cmd not in shown:
                    shown.add(cmd)
                    console.print(escape(f"profile {row['target']} with NVIDIA's tools: {cmd}"),
                                  highlight=False)
            if prof.get("notes") and prof["notes"] not in shown:
                shown.add(prof["notes"])
                console.print(f"[dim]{escape(prof['notes'])}[/]")
    console.print(render_table(results))
    for row in rows:
        for note in row.notes:
            console.print(f"[dim]{escape(row.key)}: {escape(note)}[/]", highlight=False)
    for row in rows:
        if row.verdict.status in ("regressed", "inconclusive"):
            console.print(f"[yellow]{escape(row.key)} {escape(row.verdict.label)}:[/] "
                          f"{escape(row.verdict.message)}", highlight=False)
    for row in rows:
        if row.error:
            console.print(f"[red]{escape(row.key)}:[/] {escape(row.error)}", highlight=False)
    if update_expectations:
        from aisp.harness import discovery

        by_chapter: dict[str, list[dict]] = {}
        for row in rows:
            by_chapter.setdefault(row.chapter, []).append(
                {"key": row.key, "verified": row.verified, "error": row.error,
                 "speedup": row.speedup, "speedup_rel_noise": row.speedup_rel_noise,
                 "workload": row.workload, "metrics": row.metrics()})
        for chapter, chapter_rows in by_chapter.items():
            path = exp.expectations_path(discovery.REPO_ROOT / chapter, info.key)
            updated, refused = exp.update(path, info.key, chapter_rows, prov)
            if updated:
                console.print(escape(f"updated {path}: {', '.join(updated)}"), highlight=False)
            if refused:
                console.print(f"[yellow]not updated (unverified or failed):[/] "
                              f"{escape(', '.join(refused))}", highlight=False)
    console.print(f"results: {paths['results']}  report: {paths['report']}", highlight=False)
    if any(not r.verified or r.error for r in rows):
        raise typer.Exit(1)
    if fail_on_regression:
        _exit_on_regression(rows, inconclusive_fails)


def _exit_on_regression(rows: list, inconclusive_fails: bool) -> None:
    """Exit 3 naming the rows that regressed, and the inconclusive ones unless they may pass."""
    regressed = [r.key for r in rows if r.verdict.status == "regressed"]
    inconclusive = [r.key for r in rows if r.verdict.status == "inconclusive"]
    failing = regressed + (inconclusive if inconclusive_fails else [])
    if inconclusive and not inconclusive_fails:
        console.print(escape(f"inconclusive rows pass (--inconclusive-passes): "
                             f"{', '.join(inconclusive)}"), highlight=False)
    if not failing:
        return
    parts = [f"regressed: {', '.join(regressed)}"] if regressed else []
    if inconclusive and inconclusive_fails:
        parts.append(f"inconclusive: {', '.join(inconclusive)} (too noisy to tell; "
                     f"--inconclusive-passes lets them pass)")
    console.print(f"[bold red]--fail-on-regression:[/] {escape('; '.join(parts))}",
                  highlight=False)
    raise typer.Exit(3)


model_app = typer.Typer(no_args_is_help=True, help="Synthetic models and model folders.")
app.add_typer(model_app, name="model")


@model_app.command("save-synthetic")
def save_synthetic_command(
    preset: str = typer.Argument(..., help="tiny, llama-3.2-1b, llama-3-8b, qwen3-0.6b, ..."),
    out_dir: Path = typer.Argument(..., help="Folder to write (HF layout)."),
    seed: int = typer.Option(0, "--seed", help="Weight seed."),
) -> None:
    """Write a preset with random weights as an HF folder (config, safetensors, tokenizer)."""
    from aisp.model.presets import PRESETS, save_synthetic

    if preset not in PRESETS:
        _error(f"unknown preset '{preset}'; presets: {', '.join(PRESETS)}")
        raise typer.Exit(2)
    save_synthetic(preset, out_dir, seed=seed)
    files = ", ".join(sorted(p.name for p in out_dir.iterdir()))
    console.print(escape(f"wrote {preset} to {out_dir}: {files}"), highlight=False)


@model_app.command("train")
def train_command(
    out_dir: Path = typer.Argument(..., help="Folder to write: the HF-layout checkpoint, "
                                   "train_log.json and loss.png."),
    preset: str = typer.Option("micro", "--preset", help="micro (CPU, seconds) or small (H200, "
                               "minutes); the flags below change single fields of it."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Windows per step."),
    context_len: Optional[int] = typer.Option(None, "--context-len", help="Window length (bytes)."),
    hidden_size: Optional[int] = typer.Option(None, "--hidden-size"),
    num_layers: Optional[int] = typer.Option(None, "--num-layers"),
    num_heads: Optional[int] = typer.Option(None, "--num-heads"),
    num_kv_heads: Optional[int] = typer.Option(None, "--num-kv-heads"),
    intermediate_size: Optional[int] = typer.Option(None, "--intermediate-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (after warm-up)."),
    min_lr_ratio: Optional[float] = typer.Option(None, "--min-lr-ratio",
                                                 help="Cosine floor as a fraction of --lr."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every",
                                             help="Steps between held-out evaluations."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="pydoc or pydoc+sources (the "
                                         "stdlib's .py files added to the train text only)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (cuda if available), cpu, "
                                         "cuda or cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (bfloat16 on CUDA, float32 on "
                                        "a CPU), float32 or bfloat16 (bf16 compute, float32 "
                                        "master weights)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the checkpoint files in "
                                   "a non-empty OUT_DIR (other files there are kept)."),
) -> None:
    """Train a small Llama (byte tokenizer) on the stdlib's pydoc text; save it in HF layout."""
    from aisp.model.train import train, train_preset

    given = dict(steps=steps, batch_size=batch_size, context_len=context_len,
                 hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                 num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, lr=lr,
                 min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps, weight_decay=weight_decay,
                 grad_clip=grad_clip, eval_every=eval_every, corpus=corpus, seed=seed,
                 device=device, dtype=dtype)
    try:
        config = train_preset(preset, **{k: v for k, v in given.items() if v is not None})
        num_params = config.model_config().num_params()
        console.print(escape(f"training {preset}: {num_params:,} parameters, {config.steps:,} steps "
                             f"of {config.batch_size} x {config.context_len} bytes"),
                      highlight=False)
        result = train(config, out_dir, overwrite=overwrite, progress=True)
    except (ValueError, OSError) as e:
        _error(e)
        raise typer.Exit(2)
    console.print(escape(
        f"eval loss {result.eval_loss:.4f} nats/byte (perplexity {result.eval_ppl:.2f}; uniform "
        f"{config.model_config().vocab_size}) after {result.steps:,} steps in "
        f"{result.train_seconds:.1f} s ({result.tokens_per_s:,.0f} tok/s); wrote {out_dir} "
        f"(train_log.json, loss.png beside the checkpoint)"), highlight=False)


@app.command("generate")
def generate_command(
    model: str = typer.Option("tiny", "--model", help="Preset name or HF model folder."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", min=1,
                                              help="Random-token prompts instead of --prompt."),
    input_len: int = typer.Option(128, "--input-len", min=1, help="Tokens per random prompt."),
    output_len: int = typer.Option(64, "--output-len", min=1, help="max_tokens per request."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    seed: int = typer.Option(0, "--seed", help="Weights of presets, prompts, sampling."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Always produce output-len tokens."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: "
                                         "cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16, bfloat16."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1),
    max_num_batched_tokens: int = typer.Option(2048, "--max-num-batched-tokens", min=1),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=1),
    block_size: int = typer.Option(16, "--block-size", min=1),
    num_kv_blocks: Optional[int] = typer.Option(None, "--num-kv-blocks", min=1),
    no_prefix_caching: bool = typer.Option(False, "--no-prefix-caching"),
    attention_kernels: str = typer.Option("auto", "--attention-kernels",
                                          help="auto, triton or torch."),
    cuda_graphs: str = typer.Option("auto", "--cuda-graphs",
                                    help="auto (full_and_piecewise on a GPU, none on a CPU), "
                                         "none, full (decode-only steps), piecewise (the dense "
                                         "pieces of every step, attention eager) or "
                                         "full_and_piecewise."),
    async_scheduling: str = typer.Option("auto", "--async-scheduling",
                                         help="auto (on for a GPU), on or off: plan the next "
                                              "step while the GPU runs this one."),
    compile: str = COMPILE_OPTION,
    quantization: str = QUANTIZATION_OPTION,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write summary + outputs here."),
) -> None:
    """Offline generation through the engine, with a progress bar and a throughput summary."""
    import time

    from aisp.engine.config import EngineConfig
    from aisp.engine.engine import LLMEngine
    from aisp.engine.offline import random_prompts, summarize
    from aisp.engine.sampling_params import SamplingParams

    if bool(prompt) == bool(num_prompts):
        console.print("[red]error:[/] give either --prompt (one or more) or --num-prompts")
        raise typer.Exit(2)
    try:
        if json_path:
            _check_output_file(json_path, "--json")  # before the work, so no output is lost
        cfg = EngineConfig(model=model, device=device, dtype=dtype, seed=seed,
                           block_size=block_size, num_kv_blocks=num_kv_blocks,
                           max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                           max_num_batched_tokens=max_num_batched_tokens,
                           enable_prefix_caching=not no_prefix_caching,
                           attention_kernels=attention_kernels, cuda_graphs=cuda_graphs,
                           async_scheduling=async_scheduling, compile=compile,
                              quantization=quantization)
        params = SamplingParams(max_tokens=output_len, temperature=temperature, top_p=top_p,
                                top_k=top_k, seed=seed if temperature > 0 else None,
                                ignore_eos=ignore_eos)
        with console.status(f"loading {model}..."):
            engine = LLMEngine(cfg)
        prompts = list(prompt) if prompt else random_prompts(
            num_prompts, input_len, engine.model_config.vocab_size, seed,
            avoid=engine.scheduler.eos_token_ids)
    except (ValueError, RuntimeError, OSError) as e:   # OSError: a model file missing or unreadable
        _error(e)
        raise typer.Exit(2)
    console.print(escape(f"{model} on {engine.device} ({str(engine.dtype).replace('torch.', '')}),"
                         f" {engine.kv_cache!r}, max_model_len {engine.max_model_len:,}"
                         f" ({engine.max_model_len_reason}); {engine.graph_summary()}"
                         + (f"; {engine.compile_info.summary()}" if engine.compile_info.compiled
                            else "")),
                  highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(prompts))
        t0 = time.perf_counter()
        try:
            outputs = engine.generate(
                prompts, params,
                on_output=lambda o: progress.advance(task) if o.finished else None)
        except ValueError as e:
            _error(e)
            raise typer.Exit(2)
        wall = time.perf_counter() - t0
    summary = summarize(outputs, wall)
    if prompt:
        for p, o in zip(prompts, outputs):
            console.print(f"[bold]{escape(p)!s}[/]{escape(o.text or '')}  "
                          f"[dim]({len(o.output_token_ids)} tokens, {o.finish_reason})[/]")
    t = Table(title="generate summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    fmt = lambda v: "-" if v is None else f"{v:,.2f}"  # noqa: E731
    t.add_row("requests", str(summary.num_requests))
    t.add_row("input tokens / s", fmt(summary.input_tokens_per_s))
    t.add_row("output tokens / s", fmt(summary.output_tokens_per_s))
    t.add_row("TTFT median ms", fmt(summary.ttft_median_ms))
    t.add_row("TPOT median ms", fmt(summary.tpot_median_ms))
    t.add_row("E2E median ms", fmt(summary.e2e_median_ms))
    t.add_row("wall s", fmt(summary.wall_s))
    t.add_row("requests preempted", str(summary.num_preempted_requests))
    console.print(t)
    if json_path:
        json_path.write_text(json.dumps({"summary": summary.to_dict(), "config": cfg.__dict__,
                                         "outputs": [{"request_id": o.request_id,
                                                      "output_token_ids": o.output_token_ids,
                                                      "text": o.text,
                                                      "finish_reason": o.finish_reason}
                                                     for o in outputs]}, indent=2) + "\n")


def _register_subcommands() -> None:
    from aisp.eval.cli import register as register_eval
    from aisp.loadtest.cli import register as register_loadtest
    from aisp.serve.cli import register as register_serve

    register_serve(app)
    register_loadtest(app)
    register_eval(app)


_register_subcommands()


def _with_default_targets(command: Callable[..., None], targets: str,
                          what: str) -> Callable[..., None]:
    """`command` with its --targets option defaulting to `targets`, so a script that supplies
    its own targets has help that says so instead of '--targets [required]'."""
    sig = inspect.signature(command)
    option = typer.Option(targets, "--targets", help=f"What to run; the default is {what}. "
                          f"Also takes ch16, ch16:flash_sdp or ch16:flash_sdp,paged_attention.")
    params = [p.replace(default=option) if p.name == "targets" else p
              for p in sig.parameters.values()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # what Typer builds the options from
    return wrapper


def script_main(targets: str, what: str, argv: list[str], prog_name: str, doc: str) -> None:
    """`bench run` as a chapter script's own command: same flags, --targets defaulting to
    `targets`, `doc` as its help."""
    script = typer.Typer(add_completion=False)
    script.command(help=doc)(_with_default_targets(bench_run, targets, what))
    script(args=argv, prog_name=prog_name)


def run_pair_main(pair_file: str, argv: list[str]) -> None:
    """`python ch16/optimized_X.py [bench run flags]`: run that one pair and print the
    comparison with its baseline, exactly as `aisp bench run --targets ch16:X` would."""
    path = Path(pair_file).resolve()
    name = path.stem.split("_", 1)[1]
    from aisp.harness.discovery import discover_pairs

    pair = next((p for p in discover_pairs(path.parent.name)
                 if p.name == name or path in p.optimized), None)
    if pair is None:
        raise SystemExit(f"{path.name} is not part of a baseline/optimized pair")
    doc = (f"Run the {pair.target} pair ({pair.baseline.name} against "
           f"{', '.join(p.name for p in pair.optimized)}) and print the comparison, as "
           f"`aisp bench run --targets {pair.target}` would.")
    script_main(pair.target, "this file's pair", argv, path.name, doc)


def main(argv: list[str] | None = None, prog_name: str = "aisp") -> None:
    app(args=argv, prog_name=prog_name)


if __name__ == "__main__":
    main()
