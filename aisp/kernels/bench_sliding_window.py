"""What a sliding window saves in the paged kernels: time with and without it, at long contexts.

    python -m aisp.kernels.bench_sliding_window [--json PATH] [--iterations N]

The kernels start their key loops at the first KV block inside the window, so a windowed call
should read (and cost) about window / context of a full one. Masking alone gives the same
numbers as skipping, which is why this is measured by time here and not asserted in a test.
Each case is checked against the torch twin with the same window before it is timed. Cases:
decode of 8 sequences of 16K tokens; prefill of 2 chunks of 512 tokens after 16K-token
prefixes; Llama-3-8B heads (32 q / 8 kv, head dim 128), block size 16. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from aisp.hardware import detect
from aisp.harness.timing import time_callable
from aisp.kernels.paged_attention import paged_decode_attention, paged_decode_attention_ref
from aisp.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref

HQ, HKV, D, BS = 32, 8, 128, 16
CONTEXT = 16384
WINDOWS = (None, 4096, 256)


def _cache(num_seqs: int, seq_len: int, dtype: torch.dtype, dev: torch.device):
    g = torch.Generator().manual_seed(num_seqs * 31 + seq_len)
    per_seq = math.ceil(seq_len / BS)
    table = torch.randperm(num_seqs * per_seq, generator=g).view(num_seqs, per_seq)
    k = torch.randn(num_seqs * per_seq, BS, HKV, D, dtype=dtype, device=dev)
    return k, torch.randn_like(k), table.to(dev, torch.int32)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def _time_windows(name: str, fast, ref, iters: int, dev: torch.device) -> list[dict]:
    rows = []
    for w in WINDOWS:
        err = _rel(fast(w), ref(w))
        t = time_callable(lambda w=w: fast(w), iterations=iters, warmup=10, device=dev)
        rows.append({"case": name, "window": w, "ms": t.median_ms, "p10_ms": t.p10_ms,
                     "p90_ms": t.p90_ms, "rel_error_vs_twin": err})
    full = rows[0]["ms"]
    for r in rows:
        r["speedup_vs_full"] = full / r["ms"]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args(argv)
    info = detect()
    if info.device_type != "cuda":
        raise SystemExit("bench_sliding_window needs a CUDA GPU (the twins are references)")
    dev, dtype, scale = torch.device("cuda"), torch.bfloat16, D ** -0.5
    g = torch.Generator(device=dev).manual_seed(0)

    k, v, table = _cache(8, CONTEXT, dtype, dev)
    lens = torch.full((8,), CONTEXT, dtype=torch.int32, device=dev)
    q = torch.randn(8, HQ, D, dtype=dtype, device=dev, generator=g)
    decode = (q, k, v, table, lens, scale)
    rows = _time_windows(f"decode 8 x {CONTEXT}",
                         lambda w: paged_decode_attention(*decode, sliding_window=w),
                         lambda w: paged_decode_attention_ref(*decode, sliding_window=w),
                         args.iterations, dev)
    del k, v
    q_len, seq_len = 512, CONTEXT + 512
    k, v, table = _cache(2, seq_len, dtype, dev)
    qp = torch.randn(2 * q_len, HQ, D, dtype=dtype, device=dev, generator=g)
    qsl = torch.tensor([0, q_len, 2 * q_len], dtype=torch.int32, device=dev)
    lens = torch.full((2,), seq_len, dtype=torch.int32, device=dev)
    prefill = (qp, k, v, table, qsl, lens, scale, q_len)
    rows += _time_windows(f"prefill 2 x {q_len} after {CONTEXT}",
                          lambda w: paged_prefill_attention(*prefill, sliding_window=w),
                          lambda w: paged_prefill_attention_ref(*prefill, sliding_window=w),
                          args.iterations, dev)
    print(f"{info.name}: bf16, {HQ}q/{HKV}kv heads, head dim {D}, block size {BS}; median of "
          f"{args.iterations}")
    print(f"{'case':<28} {'window':>7} {'us':>9} {'vs full':>8} {'rel err':>8}")
    for r in rows:
        print(f"{r['case']:<28} {str(r['window'] or 'none'):>7} {r['ms'] * 1e3:9.1f} "
              f"{r['speedup_vs_full']:7.1f}x {r['rel_error_vs_twin']:8.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": info.to_dict(), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
