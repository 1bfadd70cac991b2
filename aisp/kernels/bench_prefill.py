"""Paged prefill kernel against the matmul roofline and against SDPA on contiguous K/V.

    python -m aisp.kernels.bench_prefill [--json PATH] [--dtype bfloat16] [--iterations N]

For each case (sequences x new tokens, cached prefix per sequence) it checks the Triton paged
prefill kernel against its float32 twin, then times, in one run and with the harness's timer:
- the Triton kernel reading K/V in place from shuffled cache blocks through block tables;
- SDPA over the same tokens laid out contiguously ([B, H, seq_len, D], one length for all), on
  each backend that accepts the inputs (cuDNN, flash, memory-efficient); with a cached prefix
  the mask is causal_lower_right, which some backends refuse (reported, not timed).
FLOPs count only the unmasked pairs: 4 * head_dim per (query, visible key) pair and q head,
where new token j of a sequence with a prefix of P cached tokens sees P + j + 1 keys. The
ceiling is the measured dense matmul rate in the same dtype. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from aisp.hardware import ceilings, detect
from aisp.harness.timing import time_callable
from aisp.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref

CASES = [  # (sequences, new tokens each, cached prefix each)
    (64, 128, 0), (4, 2048, 0), (16, 512, 0), (8, 512, 1536), (1, 8192, 0),
]
HQ, HKV, D, BS = 32, 8, 128, 16


def causal_flops(num_seqs: int, q_len: int, prefix: int, num_q_heads: int, head_dim: int) -> float:
    """4 * head_dim FLOPs (QK^T and PV) per visible (query, key) pair, per q head."""
    pairs = q_len * prefix + q_len * (q_len + 1) // 2
    return 4.0 * head_dim * pairs * num_q_heads * num_seqs


def _case(num_seqs: int, q_len: int, prefix: int, dtype: torch.dtype, iters: int) -> dict:
    dev = torch.device("cuda")
    seq_len = prefix + q_len
    g = torch.Generator().manual_seed(num_seqs * 7 + seq_len)
    blocks_per_seq = math.ceil(seq_len / BS)
    total = num_seqs * blocks_per_seq
    table = torch.randperm(total, generator=g).view(num_seqs, blocks_per_seq).to(dev, torch.int32)
    k_cache = torch.randn(total, BS, HKV, D, dtype=dtype, device=dev)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(num_seqs * q_len, HQ, D, dtype=dtype, device=dev)
    qsl = torch.arange(0, num_seqs * q_len + 1, q_len, dtype=torch.int32, device=dev)
    lens = torch.full((num_seqs,), seq_len, dtype=torch.int32, device=dev)
    out = torch.empty_like(q)
    scale = D ** -0.5
    args = (q, k_cache, v_cache, table, qsl, lens, scale, q_len)

    got = paged_prefill_attention(*args)
    ref = paged_prefill_attention_ref(*args)
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    del got, ref
    flops = causal_flops(num_seqs, q_len, prefix, HQ, D)
    t = time_callable(lambda: paged_prefill_attention(*args, out=out), iterations=iters, warmup=10,
                      device=dev)
    row = {"num_seqs": num_seqs, "q_len": q_len, "prefix": prefix, "flops": flops,
           "rel_error_vs_reference": rel, "paged_ms": t.median_ms, "paged_p10_ms": t.p10_ms,
           "paged_p90_ms": t.p90_ms, "paged_tflops": flops / t.median_ms / 1e9, "sdpa": {}}

    # The same tokens, contiguous: [B, H, tokens, D]; the new queries are the last q_len.
    def contiguous(cache: torch.Tensor) -> torch.Tensor:
        return cache[table.long()].flatten(1, 2)[:, :seq_len].transpose(1, 2).contiguous()

    kc, vc = contiguous(k_cache), contiguous(v_cache)
    q4 = q.view(num_seqs, q_len, HQ, D).transpose(1, 2)
    mask = {} if prefix == 0 else {"attn_mask": causal_lower_right(q_len, seq_len)}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION):
        def call(b=backend):
            with sdpa_kernel([b]):
                return F.scaled_dot_product_attention(q4, kc, vc, is_causal=prefix == 0, scale=scale,
                                                      enable_gqa=True, **mask)
        name = backend.name.lower()
        try:
            with warnings.catch_warnings():  # a refusing backend explains itself in warnings too
                warnings.simplefilter("ignore")
                call()
        except RuntimeError as e:
            row["sdpa"][name] = f"unsupported: {str(e).splitlines()[0][:80]}"
            continue
        ts = time_callable(call, iterations=iters, warmup=10, device=dev)
        row["sdpa"][name] = {"ms": ts.median_ms, "p10_ms": ts.p10_ms, "p90_ms": ts.p90_ms,
                             "tflops": flops / ts.median_ms / 1e9}
    del kc, vc, k_cache, v_cache
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args(argv)
    info = detect()
    if info.device_type != "cuda":
        raise SystemExit("bench_prefill needs a CUDA GPU (the kernel's CPU twin is a reference, "
                         "not a contender)")
    ceil = ceilings(info)
    dtype = getattr(torch, args.dtype)
    rows = [_case(n, q_len, prefix, dtype, args.iterations) for n, q_len, prefix in CASES]
    peak = ceil.matmul_flops_per_s / 1e12
    print(f"{info.name}: measured {ceil.matmul_dtype} matmul {peak:,.0f} TFLOP/s; {HQ}q/{HKV}kv "
          f"heads, head dim {D}, {args.dtype}, block size {BS}; median of {args.iterations}")
    print(f"{'seqs x new':>11} {'prefix':>6} {'paged us':>9} {'TFLOP/s':>8} {'%mm':>5} "
          f"{'cudnn us':>9} {'flash us':>9} {'mem-eff us':>10} {'rel err':>8}")
    for r in rows:
        s = r["sdpa"]

        def us(k: str, width: int = 9) -> str:
            return f"{s[k]['ms'] * 1e3:{width}.1f}" if isinstance(s.get(k), dict) else f"{'-':>{width}}"

        print(f"{r['num_seqs']:>4} x {r['q_len']:<4} {r['prefix']:>6} {r['paged_ms'] * 1e3:9.1f} "
              f"{r['paged_tflops']:8.1f} {r['paged_tflops'] / peak:5.1%} {us('cudnn_attention')} "
              f"{us('flash_attention')} {us('efficient_attention', 10)} "
              f"{r['rel_error_vs_reference']:8.1e}")
    result = {"hardware": info.to_dict(), "ceilings": ceil.to_dict(), "dtype": args.dtype,
              "heads": {"q": HQ, "kv": HKV, "head_dim": D, "block_size": BS}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
