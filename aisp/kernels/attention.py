"""Dense causal attention over contiguous [batch, heads, seq, head_dim] tensors.

Three implementations of one function, GQA-aware (num_q_heads a multiple of num_kv_heads):

- `reference_causal_attention`: float64, chunked per (batch, kv head) so the S×S scores of a
  long sequence never exist all at once; the exact answer the others are judged against.
- `NaiveCausalAttention`: what textbook code does — repeat K/V heads, materialise the full S×S
  score matrix, mask, softmax, multiply. Its memory grows with S² and it spends most of its time
  moving scores through HBM.
- `SDPAAttention`: `torch.nn.functional.scaled_dot_product_attention` on the fastest backend
  that works here, chosen by measuring each candidate on the real inputs at `prepare()` time
  (cuDNN beats flash on some GPUs and shapes, flash beats cuDNN on others: a fixed rule would be
  wrong somewhere). The choice and every candidate's time are reported in `details()`.

Causality: queries and keys start together here (prefill of whole sequences), so the top-left
aligned `is_causal=True` of SDPA is the correct mask.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


class AttentionImpl(Protocol):
    name: str

    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> None: ...

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float) -> torch.Tensor: ...

    def details(self) -> dict[str, Any]: ...


def _check_gqa(q: torch.Tensor, k: torch.Tensor) -> int:
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"num_q_heads ({hq}) must be a multiple of num_kv_heads ({hkv})")
    return hq // hkv


def reference_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """Exact causal GQA attention in float64, one (batch, kv head) group at a time.

    `sliding_window` w also hides keys at positions <= the query's - w (a query sees w keys,
    itself included: transformers' `kv_idx > q_idx - sliding_window`). This is the plain-math
    reference the paged kernels' windowed twins are checked against."""
    group = _check_gqa(q, k)
    b, hq, s, d = q.shape
    out = torch.empty(b, hq, s, d, dtype=torch.float64, device=q.device)
    mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    if sliding_window is not None:
        mask |= torch.ones(s, s, dtype=torch.bool, device=q.device).tril(-sliding_window)
    for bi in range(b):
        for h in range(k.shape[1]):
            qs = q[bi, h * group:(h + 1) * group].double()           # [group, S, D]
            scores = (qs @ k[bi, h].double().T) * scale                # [group, S, S]
            scores.masked_fill_(mask, float("-inf"))
            out[bi, h * group:(h + 1) * group] = torch.softmax(scores, dim=-1) @ v[bi, h].double()
    return out


class NaiveCausalAttention:
    """Materialises scores; the baseline that Flash-style kernels exist to beat."""

    name = "naive"

    def prepare(self, q, k, v, scale) -> None:
        _check_gqa(q, k)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        s_q, s_k = q.shape[2], k.shape[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, v)

    def details(self) -> dict[str, Any]:
        return {"implementation": "matmul + mask + softmax + matmul (scores materialised)"}


_GPU_CANDIDATES = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                   SDPBackend.EFFICIENT_ATTENTION)
_CPU_CANDIDATES = (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)


class SDPAAttention:
    """SDPA on the backend measured fastest for these inputs.

    `backends` limits the candidates (e.g. to force cuDNN in a variant). GQA is tried natively
    (`enable_gqa=True`) and, where a backend rejects that, with K/V heads expanded inside the
    timed call — so an unsupported fast path pays its real cost rather than being skipped.
    """

    name = "sdpa"

    def __init__(self, backends: tuple[SDPBackend, ...] | None = None, trials: int = 5):
        self.backends = backends
        self.trials = trials
        self.choice: tuple[SDPBackend, bool] | None = None
        self.candidates: dict[str, Any] = {}

    def _call(self, q, k, v, scale, backend: SDPBackend, native_gqa: bool) -> torch.Tensor:
        with sdpa_kernel([backend]):
            if native_gqa:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                      enable_gqa=q.shape[1] != k.shape[1])
            group = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(q, k.repeat_interleave(group, dim=1),
                                                  v.repeat_interleave(group, dim=1),
                                                  is_causal=True, scale=scale)

    def _time(self, fn) -> float:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        fn()
        sync()
        samples = []
        for _ in range(self.trials):
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t0)
        return sorted(samples)[len(samples) // 2] * 1e3

    def prepare(self, q, k, v, scale) -> None:
        _check_gqa(q, k)
        cands = self.backends or (_GPU_CANDIDATES if q.is_cuda else _CPU_CANDIDATES)
        best: tuple[float, SDPBackend, bool] | None = None
        for backend in cands:
            for native in (True, False):
                label = f"{backend.name.lower()}{'' if native else '+expand_kv'}"
                try:
                    ms = self._time(lambda: self._call(q, k, v, scale, backend, native))
                except (RuntimeError, ValueError) as e:  # backend unsupported for these inputs
                    self.candidates[label] = f"unsupported: {str(e).splitlines()[0][:120]}"
                    continue
                self.candidates[label] = round(ms, 4)
                if best is None or ms < best[0]:
                    best = (ms, backend, native)
                break  # native GQA worked: no need to time the expanded form
        if best is None:
            raise RuntimeError(f"no SDPA backend among {[b.name for b in cands]} ran on these "
                               f"inputs ({q.dtype}, {q.device}): {self.candidates}")
        self.choice = (best[1], best[2])

    def __call__(self, q, k, v, scale) -> torch.Tensor:
        if self.choice is None:
            raise RuntimeError("SDPAAttention.prepare() must run before the first call")
        return self._call(q, k, v, scale, *self.choice)

    def details(self) -> dict[str, Any]:
        if self.choice is None:
            return {}
        backend, native = self.choice
        return {"backend": backend.name.lower(), "gqa": "native" if native else "expanded",
                "candidates_ms": self.candidates}
