"""Decode steps replayed from CUDA graphs: one graph per padded batch size.

Why: an eager decode step of a 32-layer model launches ~1,300 kernels from Python; at batch 1
that overhead (~24 ms on an H200 for Llama-3-8B) is six times the time the GPU needs to read
the weights. A captured graph replays all of them with one launch.

Contract:
- Everything a graph reads lives in persistent buffers allocated once for `max_batch` rows
  (STYLE.md #5): input ids, positions, slot mapping, block tables, context lengths. `run()`
  writes a step's values into the first rows, pads the rest of its bucket, and replays.
- Padding rows are inert by construction: slot -1 (store_kv skips it) and context length 0
  (the decode kernel writes zeros and reads nothing), so they touch no real KV block.
- Buckets are powers of two up to `max_batch` (plus `max_batch` itself); a step of n requests
  replays the smallest bucket >= n. Graphs share one memory pool.
- Only decode-only steps use these graphs (the `full` part of a graph mode); other steps run
  piecewise graphs (aisp.engine.piecewise_graphs) or eagerly.
- `capture=False` runs the same padded-buffer path eagerly: that is how it is tested without a
  GPU, and how a CPU engine would use it.
- The block table width is fixed at capture (max_model_len / block_size), so the decode
  kernel's split-K choice, made from host-side sizes, is the same at capture and replay.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from aisp.engine.attention import AttentionMetadata, PagedAttention
from aisp.engine.host_io import to_device
from aisp.engine.kv_cache import KVCache
from aisp.engine.piecewise_graphs import CaptureInfo
from aisp.engine.plan import ScheduledRequest
from aisp.model.llama import LlamaForCausalLM


def bucket_sizes(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_batch: int,
                 max_model_len: int, device: torch.device, kernels: str, capture: bool = True,
                 pool: tuple | None = None):
        self.model, self.kv_cache, self.device, self.kernels = model, kv_cache, device, kernels
        self.max_batch = max_batch
        self.sizes = bucket_sizes(max_batch)
        bs = kv_cache.block_size
        self.max_blocks = -(-max_model_len // bs)
        i64, i32 = dict(dtype=torch.int64, device=device), dict(dtype=torch.int32, device=device)
        # Inference tensors, like every tensor of a step: a compiled model guards on it.
        with torch.inference_mode():
            self.input_ids = torch.zeros(max_batch, **i64)
            self.positions = torch.zeros(max_batch, **i64)
            self.slot_mapping = torch.full((max_batch,), -1, **i64)
            self.block_tables = torch.zeros(max_batch, self.max_blocks, **i32)
            self.context_lens = torch.zeros(max_batch, **i32)
            self._empty_i32 = torch.zeros(0, **i32)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.hidden: dict[int, torch.Tensor] = {}
        self.captured = False
        self.info = CaptureInfo(0, 0, 0.0, 0)
        if capture:
            self._capture(pool)

    def _forward(self, n: int) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:n], num_decode_tokens=n,
            decode_block_tables=self.block_tables[:n], decode_context_lens=self.context_lens[:n],
            prefill_block_tables=self._empty_i32.view(0, 1),
            prefill_query_start_loc=self._empty_i32[:1].new_zeros(1),
            prefill_seq_lens=self._empty_i32)
        return self.model(self.input_ids[:n], self.positions[:n],
                          PagedAttention(self.kv_cache, meta, self.kernels))

    @torch.inference_mode()
    def _capture(self, pool: tuple | None) -> None:
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device; use capture=False on the CPU")
        t0 = time.perf_counter()
        torch.cuda.synchronize(self.device)
        reserved0 = torch.cuda.memory_reserved(self.device)
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        # Inert inputs (every row padding) so warm-up and capture write no real KV.
        self.context_lens.zero_()
        self.slot_mapping.fill_(-1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for n in reversed(self.sizes):  # largest first: later graphs reuse its pool
                for _ in range(2):  # compile Triton kernels, let cuBLAS pick algorithms
                    self._forward(n)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.hidden[n] = self._forward(n)
                self.graphs[n] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.captured = True
        self.info = CaptureInfo(num_graphs=len(self.graphs), num_buckets=len(self.graphs),
                                capture_s=time.perf_counter() - t0,
                                pool_bytes=torch.cuda.memory_reserved(self.device) - reserved0)

    def bucket_for(self, n: int) -> int:
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"decode batch of {n} outside the captured range 1..{self.max_batch}")
        return next(b for b in self.sizes if b >= n)

    def run(self, decodes: Sequence[ScheduledRequest],
            pending: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states [len(decodes), hidden] of one decode-only step. `pending` = (rows, ids
        on the device) fills the input ids the host does not know yet (async scheduling)."""
        n = len(decodes)
        b = self.bucket_for(n)
        bs = self.kv_cache.block_size
        widths = [len(s.block_ids) for s in decodes]
        if max(widths) > self.max_blocks:
            raise ValueError(f"a request holds {max(widths)} blocks; graphs were captured for "
                             f"{self.max_blocks} (max_model_len)")
        w = max(widths)
        table = to_device([list(s.block_ids) + [0] * (w - len(s.block_ids)) for s in decodes],
                          torch.int32, self.device)
        host = to_device([[s.token_ids[0], s.start_position,
                           s.block_ids[s.start_position // bs] * bs + s.start_position % bs,
                           s.start_position + 1] for s in decodes], torch.int64, self.device)
        self.input_ids[:n].copy_(host[:, 0])
        if pending is not None:
            self.input_ids.index_copy_(0, *pending)
        self.positions[:n].copy_(host[:, 1])
        self.slot_mapping[:n].copy_(host[:, 2])
        self.context_lens[:n].copy_(host[:, 3])
        self.block_tables[:n, :table.shape[1]].copy_(table)
        # Padding rows of this bucket: inert (see module docstring).
        self.slot_mapping[n:b].fill_(-1)
        self.context_lens[n:b].zero_()
        self.input_ids[n:b].zero_()
        self.positions[n:b].zero_()
        if self.captured:
            self.graphs[b].replay()
            return self.hidden[b][:n]
        return self._forward(b)[:n]
