"""Offline throughput of the engine against HF transformers, and batch-1 decode, on one GPU.

    python -m aisp.workloads.offline_throughput --model llama-3-8b [--variants default,sync,eager]
        [--json PATH]

- engine: `num_prompts` random-token prompts of `input_len` tokens, `output_len` tokens each
  (EOS ignored), all submitted at once; continuous batching does the rest.
- HF: the same preset's shapes as a transformers model (random weights: throughput does not
  depend on their values), eager attention with its dynamic cache, `generate` in batches of
  `hf_batch`, exactly `output_len` new tokens per prompt.
- batch 1: one request; tokens/s from the engine's TPOT, against the bytes a decode step reads
  (every weight except the embedding table's unread rows, plus the mean KV history) over the
  measured copy bandwidth.

The engine's roofline fraction for the whole run: the floor is the larger of the bytes read
(weights per step, embedding rows per token, KV history) over the copy bandwidth and the matmul
FLOPs (layers per token, LM head per sampled token, attention per query-key pair) over the
matmul ceiling; both are counted by aisp.workloads.decoder_cost from the model itself. It is a
lower bound: per step the larger of the two would be tighter. All runs happen in one process,
so the ratios are measured in one run on one GPU.

Variants are the engine with one switch changed (VARIANTS), run in the same process, so the
gain of each optimization is measured in one run: `default` has them all; `regional` adds
regional `torch.compile` (aisp.model.compile) under the default graph mode, so the piecewise
and full decode graphs capture the compiled halves: default vs regional is what compiling buys
(or costs) the engine at steady state.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import time

import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.offline import random_prompts, summarize
from aisp.engine.sampling_params import SamplingParams
from aisp.hardware import ceilings, detect
from aisp.model.presets import resolve_model
from aisp.workloads.decoder_cost import DecoderCost, causal_pairs


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


# Engine options that differ from the defaults, per variant: each turns one optimization off.
VARIANTS: dict[str, dict] = {
    "default": {},
    "sync": {"async_scheduling": "off"},     # host planning between GPU steps, not during them
    "eager": {"cuda_graphs": "none"},        # every step launched op by op from Python
    "full": {"cuda_graphs": "full"},         # whole-step graphs for decode-only steps only
    "piecewise": {"cuda_graphs": "piecewise"},  # the dense pieces of every step, attention eager
    "regional": {"compile": "regional"},     # default graphs capturing compiled layer halves
    "fp8": {"quantization": "fp8"},          # FP8 weights (per channel), activations per token
    "fp8-per-tensor": {"quantization": "fp8-per-tensor"},
}


def engine_run(model: str, num_prompts: int, input_len: int, output_len: int,
               max_num_seqs: int, kv_fraction: float, variant: str = "default",
               profile: bool = True) -> dict:
    t_init = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=model, max_num_seqs=max_num_seqs,
                                    kv_cache_memory_fraction=kv_fraction,
                                    max_num_batched_tokens=8192, **VARIANTS[variant]))
    init_s = time.perf_counter() - t_init
    mc = engine.model_config
    vocab = mc.vocab_size
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    # Warm up on the real workload's shapes (full prefill and mixed steps, every graph bucket):
    # Triton specialises kernels on argument values and cuBLAS picks algorithms per shape, so a
    # small warm-up leaves compilation inside the measured prefill.
    engine.generate(random_prompts(num_prompts, input_len, vocab, seed=99),
                    SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    steps = []
    engine.step_listeners.append(steps.append)
    prompts = random_prompts(num_prompts, input_len, vocab, seed=1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    summary = summarize(outs, wall).to_dict()
    summary["num_steps"] = len(steps)
    summary["median_step_ms"] = sorted(s.step_time_s for s in steps)[len(steps) // 2] * 1e3
    summary["max_batch"] = max(s.num_scheduled_requests for s in steps)
    decode = [s for s in steps if s.num_scheduled_requests == s.num_scheduled_tokens
              and s.num_scheduled_requests >= max_num_seqs // 2]
    med = lambda xs: sorted(xs)[len(xs) // 2] * 1e3 if xs else None  # noqa: E731
    summary["decode_step_ms"] = {"total": med([s.step_time_s for s in decode]),
                                 "schedule": med([s.schedule_s for s in decode]),
                                 "execute": med([s.execute_s for s in decode]),
                                 "update": med([s.update_s for s in decode]),
                                 "num_steps": len(decode)}
    summary["ttft_p90_ms"] = sorted(o.metrics.ttft for o in outs)[int(0.9 * len(outs))] * 1e3
    summary["prefill_s"] = max(o.metrics.first_token_time for o in outs) - \
        min(o.metrics.arrival_time for o in outs)
    summary["gpu_decode_step_ms"] = (_profile_decode_gpu_time(engine, prompts[:max_num_seqs], params)
                                     if profile else None)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    n_params = sum(p.numel() for p in engine.model.parameters())
    kv_per_token = engine.kv_cache.spec.bytes_per_token
    cost = DecoderCost.of(engine.model, kv_per_token)
    one = engine.generate(random_prompts(1, input_len, vocab, seed=2), params)[0]
    del engine
    _free()
    return {"summary": summary, "variant": variant, "options": VARIANTS[variant],
            "init_s": init_s,
            "weight_bytes": weight_bytes, "params": n_params,
            "kv_bytes_per_token": kv_per_token, "cost": dataclasses.asdict(cost),
            "batch1_tpot_ms": one.metrics.tpot * 1e3,
            "batch1_tokens_per_s": 1.0 / one.metrics.tpot}


def _profile_decode_gpu_time(engine: LLMEngine, prompts, params, steps: int = 5) -> dict:
    """Device time of full-batch decode steps (torch.profiler), to split a step's wall time
    into GPU work and host work."""
    from torch.profiler import ProfilerActivity, profile

    for p in prompts:
        engine.add_request(p, params)
    while any(r.num_computed_tokens < r.num_prompt_tokens
              for r in engine.scheduler.requests.values()):
        engine.step()  # through the prefills
    engine.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    kernels = [(e.key, getattr(e, "self_device_time_total", 0.0)) for e in prof.key_averages()]
    kernels = [(k, t) for k, t in kernels if t > 0 and not k.startswith("aten::")]
    total_us = sum(t for _, t in kernels) / steps
    top = sorted(kernels, key=lambda kt: -kt[1])[:8]
    engine.abort(list(engine.scheduler.requests))
    return {"wall_ms": wall * 1e3, "device_ms": total_us / 1e3,
            "top_kernels_ms": [(k[:90], t / steps / 1e3) for k, t in top]}


def hf_run(model: str, num_prompts: int, input_len: int, output_len: int, batch: int) -> dict:
    import transformers

    cfg_dict = resolve_model(model).config.to_hf()
    hf_cfg = transformers.AutoConfig.for_model(**cfg_dict)
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(
            hf_cfg, dtype=torch.bfloat16, attn_implementation="eager").eval()
    prompts = torch.tensor(random_prompts(num_prompts, input_len, hf_cfg.vocab_size, seed=1),
                           device="cuda")

    def gen(ids: torch.Tensor, n: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0)

    gen(prompts[:batch], 8)  # warm up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    produced = 0
    for i in range(0, num_prompts, batch):
        out = gen(prompts[i:i + batch], output_len)
        produced += (out.shape[1] - input_len) * out.shape[0]
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    del hf
    _free()
    return {"wall_s": wall, "output_tokens": produced, "output_tokens_per_s": produced / wall,
            "batch": batch, "attn_implementation": "eager", "cache": "dynamic",
            "transformers": transformers.__version__}


def roofline(eng: dict, input_len: int, output_len: int, num_prompts: int, ceil) -> dict:
    """Floor time of the engine run and of a batch-1 decode step (module docstring)."""
    s = eng["summary"]
    cost = DecoderCost(**eng["cost"])
    seq_tokens = input_len + output_len - 1          # the last sampled token is never fed back
    num_tokens = num_prompts * seq_tokens
    kv_tokens_read = num_prompts * sum(input_len + t for t in range(1, output_len))
    weights_per_step = cost.step_bytes(num_tokens=0, kv_tokens_read=0)
    mem_bytes = (s["num_steps"] * weights_per_step
                 + (cost.step_bytes(num_tokens, kv_tokens_read) - weights_per_step))
    mem_s = mem_bytes / ceil.copy_bytes_per_s
    flops = cost.flops(num_tokens=num_tokens, num_logits=num_prompts * output_len,
                       attended_pairs=num_prompts * causal_pairs(0, seq_tokens))
    flop_s = flops / ceil.matmul_flops_per_s
    floor = max(mem_s, flop_s)
    batch1_bytes = cost.step_bytes(num_tokens=1, kv_tokens_read=input_len + output_len // 2)
    batch1_floor_ms = batch1_bytes / ceil.copy_bytes_per_s * 1e3
    return {"floor_s": floor, "memory_floor_s": mem_s, "compute_floor_s": flop_s,
            "bytes": mem_bytes, "flops": flops,
            "fraction": floor / s["wall_s"], "batch1_bytes": batch1_bytes,
            "batch1_floor_ms": batch1_floor_ms,
            "batch1_fraction": batch1_floor_ms / eng["batch1_tpot_ms"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--kv-fraction", type=float, default=0.5)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--variants", default="default",
                    help=f"comma-separated engine variants to run in this process, the first "
                         f"one profiled and used for the roofline: {', '.join(VARIANTS)}")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    info = detect()
    if info.device_type != "cuda":
        raise SystemExit("offline_throughput compares GPU throughput; it needs a CUDA GPU")
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    ceil = ceilings(info)
    runs = {v: engine_run(a.model, a.num_prompts, a.input_len, a.output_len, a.max_num_seqs,
                          a.kv_fraction, v, profile=i == 0) for i, v in enumerate(variants)}
    eng = runs[variants[0]]
    roof = roofline(eng, a.input_len, a.output_len, a.num_prompts, ceil)
    hf = None if a.no_hf else hf_run(a.model, a.num_prompts, a.input_len, a.output_len,
                                     a.hf_batch)
    s = eng["summary"]
    print(f"{a.model} on {info.name}: {a.num_prompts} prompts x {a.input_len} in / "
          f"{a.output_len} out")
    print(f"  engine: {s['output_tokens_per_s']:,.0f} output tok/s, wall {s['wall_s']:.2f} s, "
          f"{s['num_steps']} steps (median {s['median_step_ms']:.2f} ms, max batch "
          f"{s['max_batch']}), roofline {roof['fraction']:.1%}")
    d, g = s["decode_step_ms"], s["gpu_decode_step_ms"]
    print(f"  full-batch decode step: {d['total']:.2f} ms = schedule {d['schedule']:.2f} + "
          f"execute {d['execute']:.2f} + update {d['update']:.2f}; GPU busy {g['device_ms']:.2f} ms "
          f"of {g['wall_ms']:.2f} ms (profiled)")
    for name, ms in g["top_kernels_ms"][:5]:
        print(f"      {ms:7.3f} ms  {name}")
    print(f"  {'variant':<9} {'out tok/s':>10} {'vs first':>8} {'decode step ms':>15} "
          f"{'sched/exec/upd ms':>18} {'TTFT med/p90 ms':>16} {'prefill s':>9} {'b1 TPOT ms':>10}")
    for name, run in runs.items():
        r, d = run["summary"], run["summary"]["decode_step_ms"]
        print(f"  {name:<9} {r['output_tokens_per_s']:>10,.0f} "
              f"{r['output_tokens_per_s'] / s['output_tokens_per_s']:>7.2f}x {d['total']:>15.2f} "
              f"{d['schedule']:>6.2f}/{d['execute']:>5.2f}/{d['update']:>5.2f} "
              f"{r['ttft_median_ms']:>8,.0f}/{r['ttft_p90_ms']:>7,.0f} {r['prefill_s']:>9.2f} "
              f"{run['batch1_tpot_ms']:>10.2f}")
    if hf:
        print(f"  HF transformers {hf['transformers']} (eager, batch {a.hf_batch}): "
              f"{hf['output_tokens_per_s']:,.0f} output tok/s -> engine / HF = "
              f"{s['output_tokens_per_s'] / hf['output_tokens_per_s']:.1f}x")
    print(f"  batch 1: {eng['batch1_tokens_per_s']:,.1f} tok/s (TPOT {eng['batch1_tpot_ms']:.2f} "
          f"ms; floor {roof['batch1_bytes'] / 1e9:.2f} GB read = {roof['batch1_floor_ms']:.2f} ms, "
          f"{roof['batch1_fraction']:.1%} of it)")
    result = {"model": a.model, "args": vars(a), "hardware": info.to_dict(),
              "ceilings": ceil.to_dict(), "engine": eng, "variants": runs, "roofline": roof,
              "hf": hf}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
