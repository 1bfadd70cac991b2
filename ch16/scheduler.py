"""Watch the continuous-batching scheduler work, step by step: `python ch16/scheduler.py`.

Runs the real engine (the `tiny` preset, CPU or GPU) with a deliberately small KV cache and
token budget, so that one screen shows everything the scheduler does: decodes first, prefill
chunks filling the rest of the token budget (chunked prefill, mixed batches), new requests
admitted as others finish, preemption by recompute when blocks run out (the victim resumes later
and loses nothing), and, with --policy priority, urgent requests served first.

Admission keeps headroom, so a request is never admitted only to be preempted again at once (the
thrash this demo used to show: a long prompt taking the last free blocks with its first chunk,
preempted next step because its second chunk did not fit, over and over). A waiting request is
admitted only if the free blocks left after it still cover what the admitted requests need
through the next steps (the rest of every prefill in progress, then one decode token each) plus
the watermark: `kv_cache_watermark` (default 1%, vLLM's value) of the blocks, rounded up, so at
least 1 block, kept free at admission. A request that would run alone is admitted whenever it
fits. Preemptions left are decode growth after progress; the summary counts the thrash ones.

Each row is one engine step: per request, `P12` is a prefill chunk of 12 tokens and `D` a decode
token; `!` marks a request preempted in that step; then running/waiting counts and KV use.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

# (prompt tokens, max_tokens, priority): short and long prompts, so chunking and preemption show.
REQUESTS = [(40, 12, 2), (9, 20, 1), (28, 10, 0), (14, 14, 2), (22, 8, 1), (6, 18, 0)]


def main(
    policy: str = typer.Option("fcfs", "--policy", help="fcfs or priority (lower value first)."),
    token_budget: int = typer.Option(16, "--token-budget", min=1,
                                     help="max_num_batched_tokens per step."),
    num_kv_blocks: int = typer.Option(20, "--num-kv-blocks", min=1,
                                      help="KV blocks of 4 tokens (small: forces preemption)."),
    max_num_seqs: int = typer.Option(4, "--max-num-seqs", min=1),
    kv_cache_watermark: float = typer.Option(
        0.01, "--kv-cache-watermark", help="fraction of KV blocks kept free at admission "
        "(rounded up to whole blocks; 0 = none)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: what is there)."),
) -> None:
    from aisp.engine.config import EngineConfig
    from aisp.engine.engine import LLMEngine
    from aisp.engine.sampling_params import SamplingParams

    console = Console()
    try:
        engine = LLMEngine(EngineConfig(
            model="tiny", device=device, block_size=4, num_kv_blocks=num_kv_blocks,
            max_model_len=4 * num_kv_blocks, max_num_batched_tokens=token_budget,
            max_num_seqs=max_num_seqs, policy=policy, enable_prefix_caching=False,
            kv_cache_watermark=kv_cache_watermark))
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2)
    names = {}
    try:
        for i, (n, out, prio) in enumerate(REQUESTS):
            prompt = [(7 * i + j) % 200 + 3 for j in range(n)]
            rid = engine.add_request(prompt, SamplingParams(max_tokens=out, temperature=0,
                                                            ignore_eos=True),
                                     request_id=f"R{i}", priority=prio)
            names[rid] = f"R{i} ({n} in, {out} out, prio {prio})"
    except ValueError as e:  # admission: the cache cannot hold this request
        console.print(f"[red]error:[/] {e}; give it more --num-kv-blocks")
        raise typer.Exit(2)
    console.print(f"requests: {', '.join(names.values())}")
    console.print(f"budget {token_budget} tokens/step, {max_num_seqs} running at most, "
                  f"{num_kv_blocks} KV blocks x 4 tokens, policy {policy}")
    console.print(f"admission keeps {engine.scheduler.watermark_blocks} of {num_kv_blocks} blocks "
                  f"free (watermark {kv_cache_watermark * 100:g}% of the blocks, rounded up) beyond what "
                  f"the admitted requests need through their next steps\n")

    table = Table(title="one row per engine step", title_justify="left")
    table.add_column("step", justify="right")
    for rid in names:
        table.add_column(rid, justify="center")
    for col in ("tokens", "run", "wait", "KV used", "finished"):
        table.add_column(col, justify="right" if col != "finished" else "left")
    steps, total_preempted = [], 0
    # Thrash: preempted before producing a token since its admission, or in the step after it.
    running, admitted_at, produced, thrash = set(), {}, {}, []

    def on_step(stats) -> None:
        steps.append(stats)
        for rid in stats.preempted_request_ids:
            if not produced[rid] or len(steps) <= admitted_at[rid] + 1:
                thrash.append(rid)
            running.discard(rid)
        for rid, _, _ in stats.scheduled:
            if rid not in running:
                running.add(rid)
                admitted_at[rid], produced[rid] = len(steps), False
        cells = {rid: (f"P{n}" if not decode else "D") for rid, n, decode in stats.scheduled}
        for rid in stats.preempted_request_ids:
            cells[rid] = cells.get(rid, "") + "!"
        usage = stats.kv_cache_usage
        bar = "#" * round(usage * 10) + "." * (10 - round(usage * 10))
        table.add_row(str(len(steps)), *[cells.get(rid, "") for rid in names],
                      str(stats.num_scheduled_tokens), str(stats.num_running),
                      str(stats.num_waiting), f"{bar} {usage:4.0%}",
                      " ".join(stats.finished_request_ids))

    engine.step_listeners.append(on_step)
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            produced[out.request_id] |= bool(out.new_token_ids)
            if out.finished:
                outputs[out.request_id] = out
    console.print(table)
    total_preempted = sum(len(s.preempted_request_ids) for s in steps)
    mixed = sum(1 for s in steps if any(d for _, _, d in s.scheduled)
                and any(not d for _, _, d in s.scheduled))
    console.print(f"\n{len(steps)} steps; {mixed} mixed prefill+decode steps; "
                  f"{total_preempted} preemptions (recompute), {len(thrash)} of them thrash "
                  f"(preempted before a token since admission, or in the step after it).")
    for rid, out in outputs.items():
        m = out.metrics
        console.print(f"{rid}: {len(out.output_token_ids)} tokens ({out.finish_reason}), "
                      f"preempted {m.num_preemptions}x, TTFT {m.ttft * 1e3:.1f} ms, "
                      f"E2E {m.e2e * 1e3:.1f} ms")
    free = engine.block_manager.num_free_blocks
    console.print(f"KV blocks free at the end: {free} of {num_kv_blocks} (nothing leaked)"
                  if free == num_kv_blocks else
                  f"[red]KV blocks free at the end: {free} of {num_kv_blocks}[/]")


if __name__ == "__main__":
    typer.run(main)
