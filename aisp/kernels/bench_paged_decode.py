"""Paged decode kernel against the memory roofline and against SDPA on contiguous KV.

    python -m aisp.kernels.bench_paged_decode [--json PATH] [--dtype bfloat16]

For each case (batch, context lengths) it times, in one run and with the harness's timer:
- the Triton paged decode kernel reading scattered blocks through block tables;
- SDPA over the same K/V laid out contiguously ([B, Hkv, ctx, D], uniform lengths only), on
  each backend that accepts the inputs (flash, cuDNN, memory-efficient).
Achieved bandwidth counts the K and V bytes each call must read; the ceiling is the measured
device copy bandwidth (read + write), as in every aisp report. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from aisp.hardware import ceilings, detect
from aisp.harness.timing import time_callable
from aisp.kernels.paged_attention import paged_decode_attention, paged_decode_attention_ref

CASES = [  # (batch, min context, max context)
    (64, 4096, 4096), (64, 256, 4096), (128, 2048, 2048), (16, 4096, 4096), (4, 8192, 8192),
    (1, 32768, 32768),
]
HQ, HKV, D, BS = 32, 8, 128, 16


def _case(batch: int, lo: int, hi: int, dtype: torch.dtype, iters: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(batch * 7 + hi)
    lens = torch.randint(lo, hi + 1, (batch,), generator=g)
    blocks = [math.ceil(int(n) / BS) for n in lens]
    total = sum(blocks)
    perm = torch.randperm(total, generator=g)
    width = max(blocks)
    table = torch.zeros(batch, width, dtype=torch.int32)
    start = 0
    for i, nb in enumerate(blocks):
        table[i, :nb] = perm[start:start + nb]
        start += nb
    k_cache = torch.randn(total, BS, HKV, D, dtype=dtype, device=dev)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch, HQ, D, dtype=dtype, device=dev)
    table, lens_d = table.to(dev), lens.to(dev, torch.int32)
    out = torch.empty_like(q)
    scale = D ** -0.5
    got = paged_decode_attention(q, k_cache, v_cache, table, lens_d, scale)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, table, lens_d, scale)
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    kv_bytes = 2 * int(lens.sum()) * HKV * D * k_cache.element_size()
    t = time_callable(lambda: paged_decode_attention(q, k_cache, v_cache, table, lens_d, scale,
                                                     out=out), iterations=iters, warmup=10,
                      device=dev)
    row = {"batch": batch, "min_context": lo, "max_context": hi, "kv_bytes": kv_bytes,
           "rel_error_vs_reference": rel, "paged_ms": t.median_ms,
           "paged_gbps": kv_bytes / t.median_ms / 1e6, "sdpa": {}}
    if lo == hi:  # contiguous SDPA needs one length for all (no padding mask to muddy it)
        kc = torch.randn(batch, HKV, hi, D, dtype=dtype, device=dev)
        vc = torch.randn_like(kc)
        q4 = q.unsqueeze(2)
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION):
            def call(b=backend):
                with sdpa_kernel([b]):
                    return F.scaled_dot_product_attention(q4, kc, vc, enable_gqa=True, scale=scale)
            try:
                call()
            except RuntimeError as e:
                row["sdpa"][backend.name.lower()] = f"unsupported: {str(e).splitlines()[0][:80]}"
                continue
            ts = time_callable(call, iterations=iters, warmup=10, device=dev)
            row["sdpa"][backend.name.lower()] = {"ms": ts.median_ms,
                                                 "gbps": kv_bytes / ts.median_ms / 1e6}
        del kc, vc
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--iterations", type=int, default=100)
    args = ap.parse_args(argv)
    info = detect()
    if info.device_type != "cuda":
        raise SystemExit("bench_paged_decode needs a CUDA GPU (the kernel's CPU twin is a "
                         "reference, not a contender)")
    ceil = ceilings(info)
    dtype = getattr(torch, args.dtype)
    rows = [_case(b, lo, hi, dtype, args.iterations) for b, lo, hi in CASES]
    copy = ceil.copy_bytes_per_s / 1e9
    print(f"{info.name}: measured copy bandwidth {copy:,.0f} GB/s; {HQ}q/{HKV}kv heads, "
          f"head dim {D}, {args.dtype}, block size {BS}")
    print(f"{'batch':>5} {'context':>11} {'paged us':>9} {'GB/s':>6} {'%copy':>6} "
          f"{'cudnn us':>9} {'flash us':>9} {'rel err':>8}")
    for r in rows:
        s = r["sdpa"]
        us = lambda k: f"{s[k]['ms'] * 1e3:9.1f}" if isinstance(s.get(k), dict) else f"{'-':>9}"  # noqa: E731
        ctx = f"{r['min_context']}-{r['max_context']}" if r["min_context"] != r["max_context"] \
            else str(r["max_context"])
        print(f"{r['batch']:>5} {ctx:>11} {r['paged_ms'] * 1e3:9.1f} {r['paged_gbps']:6.0f} "
              f"{r['paged_gbps'] / copy:6.1%} {us('cudnn_attention')} {us('flash_attention')} "
              f"{r['rel_error_vs_reference']:8.1e}")
    result = {"hardware": info.to_dict(), "ceilings": ceil.to_dict(), "dtype": args.dtype,
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
