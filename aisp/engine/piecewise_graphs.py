"""Piecewise CUDA graphs: the dense pieces of any step replayed from graphs, attention eager.

Why: a step with prefill chunks cannot replay a whole-step graph (its attention metadata and
shapes change every step), so before this it ran eagerly, ~30 Python-launched kernels per
layer. Everything *between* two attention calls depends only on the number of tokens in the
step: the embedding, norms and residual adds, QKV and output projections, q/k-norm, RoPE and
the MLP. Those pieces are captured once per token-count bucket; attention runs between them,
eagerly, on the step's real (unpadded) metadata. This serves mixed prefill+decode steps and
decode steps alike (vLLM's PIECEWISE mode, here without a compiler pass: the model's decoder
layer is already split into `pre_attention` and `post_attention`).

Pieces of an L-layer model (L + 1 of them per bucket):

    piece 0     embed -> layer 0 pre_attention                 -> q, k, v, residual
    attention 0 (eager: KV store + paged decode / prefill kernels)   -> attn_out
    piece i     layer i-1 post_attention -> layer i pre_attention -> q, k, v, residual
    ...
    piece L     layer L-1 post_attention -> final norm            -> hidden

Contract:
- Each piece reads and writes only persistent buffers sized for `max_tokens` rows (input ids,
  positions, residual, q/k/v, attention output, final hidden) through views of their first
  `bucket` rows, so a piece's graph is valid for every step that pads into its bucket, and no
  memory inside the graph pool outlives a replay: all graphs share one pool safely, whatever
  order they replay in.
- A step of n tokens runs in the smallest bucket >= n. Rows n..bucket-1 are padding: the dense
  pieces are row-wise (a row's output depends only on that row), so padding cannot change a
  real row; attention never sees padding (it runs on rows [:n]).
- Bucket sizes follow vLLM's: 1, 2, 4, then steps of 8 up to 256, then steps of 16 up to
  `max_tokens` (included). Larger steps run eagerly.
- `capture=False` runs the same padded pieces eagerly: that is how the path is tested on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aisp.model.llama import LlamaForCausalLM

AttentionCall = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def capture_sizes(max_tokens: int) -> list[int]:
    """1, 2, 4, 8..248 by 8, 256..max by 16, and max_tokens itself: every size <= max_tokens."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens is {max_tokens}; piecewise graphs need at least 1 token")
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, max_tokens + 1, 16)]
    sizes = [s for s in sizes if s <= max_tokens]
    return sizes if sizes[-1] == max_tokens else [*sizes, max_tokens]


@dataclass(frozen=True)
class CaptureInfo:
    """What capturing cost: reported at engine start and by the piece_graphs pair."""

    num_graphs: int
    num_buckets: int
    capture_s: float          # warm-up and capture of every piece of every bucket
    pool_bytes: int           # device memory the graphs' pool reserved


class PiecewiseGraphs:
    def __init__(self, model: LlamaForCausalLM, max_tokens: int, device: torch.device,
                 capture: bool = True, pool: tuple | None = None):
        cfg = model.config
        self.model, self.device = model, device
        self.sizes = capture_sizes(max_tokens)
        self.max_tokens = self.sizes[-1]
        self.num_layers = len(model.layers)
        dtype = model.embed_tokens.weight.dtype
        t = self.max_tokens
        f = dict(dtype=dtype, device=device)
        # Inference tensors, like every tensor of a step: compiled halves guard on it.
        with torch.inference_mode():
            self.input_ids = torch.zeros(t, dtype=torch.int64, device=device)
            self.positions = torch.zeros(t, dtype=torch.int64, device=device)
            self.residual = torch.zeros(t, cfg.hidden_size, **f)
            self.hidden = torch.zeros(t, cfg.hidden_size, **f)
            self.q = torch.zeros(t, cfg.num_attention_heads, cfg.head_dim, **f)
            self.k = torch.zeros(t, cfg.num_key_value_heads, cfg.head_dim, **f)
            self.v = torch.zeros_like(self.k)
            self.attn_out = torch.zeros_like(self.q)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.captured = False
        self.info = CaptureInfo(0, 0, 0.0, 0)
        if capture:
            self._capture(pool)

    def _piece(self, i: int, n: int) -> None:
        """Piece i on the first n rows of the persistent buffers (see the module docstring)."""
        m, layers = self.model, self.model.layers
        if i == 0:
            hidden, residual = m.embed_tokens(self.input_ids[:n]), None
        else:
            hidden, residual = layers[i - 1].post_attention(self.attn_out[:n], self.residual[:n])
        if i == self.num_layers:
            hidden, _ = m.norm(hidden, residual)
            self.hidden[:n].copy_(hidden)
            return
        rope = m.rotary_emb.for_positions(self.positions[:n])
        q, k, v, residual = layers[i].pre_attention(hidden, residual, rope)
        self.q[:n].copy_(q)
        self.k[:n].copy_(k)
        self.v[:n].copy_(v)
        self.residual[:n].copy_(residual)

    @torch.inference_mode()
    def _capture(self, pool: tuple | None) -> None:
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device; use capture=False on the CPU")
        t0 = time.perf_counter()
        torch.cuda.synchronize(self.device)
        reserved0 = torch.cuda.memory_reserved(self.device)
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        pieces = range(self.num_layers + 1)
        with torch.cuda.stream(stream):
            for b in reversed(self.sizes):  # largest first: smaller buckets reuse its pool
                for _ in range(2):  # compile Triton kernels, let cuBLAS pick algorithms
                    for i in pieces:
                        self._piece(i, b)
                graphs = []
                for i in pieces:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool, stream=stream):
                        self._piece(i, b)
                    graphs.append(g)
                self.graphs[b] = graphs
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.captured = True
        self.info = CaptureInfo(num_graphs=sum(len(g) for g in self.graphs.values()),
                                num_buckets=len(self.graphs),
                                capture_s=time.perf_counter() - t0,
                                pool_bytes=torch.cuda.memory_reserved(self.device) - reserved0)

    def bucket_for(self, n: int) -> int:
        if not 1 <= n <= self.max_tokens:
            raise ValueError(f"a step of {n} tokens is outside the captured range "
                             f"1..{self.max_tokens}")
        return next(b for b in self.sizes if b >= n)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            attention: AttentionCall) -> torch.Tensor:
        """Hidden states [n, hidden] of one step of n = len(input_ids) tokens (on the device).
        `attention(layer_idx, q, k, v)` is the step's attention over its n real tokens."""
        n = input_ids.shape[0]
        b = self.bucket_for(n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.input_ids[n:b].zero_()       # padding rows: any valid id and position will do
        self.positions[n:b].zero_()
        graphs = self.graphs.get(b) if self.captured else None
        for i in range(self.num_layers + 1):
            if graphs is not None:
                graphs[i].replay()
            else:
                self._piece(i, b)
            if i < self.num_layers:
                self.attn_out[:n].copy_(attention(i, self.q[:n], self.k[:n], self.v[:n]))
        return self.hidden[:n]
