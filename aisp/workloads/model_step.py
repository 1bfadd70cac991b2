"""One real engine step outside the engine: a flattened batch, a filled paged KV cache, metadata.

    step = build_step(StepShape(num_decodes=64, context_len=512, num_prefills=2,
                                prefill_len=128), model.config, device, dtype)
    logits = step.logits(model, kernels)          # [num_decodes + num_prefills, vocab] float32
    exact = reference_logits(model, step)         # the same step in float64, layer by layer

The layout is the engine's (aisp.engine.attention): decodes first, one token each at position
`context_len` after a cached history of `context_len` tokens, then `num_prefills` first chunks
of new prompts (positions 0 .. prefill_len - 1). Each sequence's blocks are scattered through
the pool, as in a long-running server. The cached history is seeded random data (K/V values do
not change the work of a step); the step's own K/V are written into the cache by the forward
pass, always into the same slots with the same values, so repeated runs give identical outputs.
Logits are taken at the last token of every sequence, as the runner samples.

`StepGraph(step, model, kernels)` captures `step.logits(...)` as one CUDA graph (on a CUDA
device only), in a private pool, after two warm-up runs; `replay()` reruns it and returns the
graph's own logits buffer (overwritten by the next replay: clone it to keep it). Capture-safe
because a Step is fixed: its ids, positions, slots, block tables and lengths are device tensors
built once by `build_step`, its host-side sizes (decode count, longest prefill chunk, table
width) choose the same kernels and grids at every call, and nothing on the forward path reads
the device from the host (no `.item()` / `.tolist()`, no boolean indexing, no CPU tensor made
per call: the Triton attention kernels decide from host sizes only). It needs those kernels:
the torch twins sync (boolean indexing, `.tolist()` of lengths), so `kernels="torch"` is refused.
Replays write the same K/V into the same slots, as runs do.

`reference_logits` recomputes the step in float64 from the model's weights and the cache's
history, one layer at a time (float64 copies of one layer's weights and KV cache at a time), so
it fits beside an 8B model on one GPU. It writes the decoder's math out itself: it never calls
the model's (possibly compiled) forward, nor the kernel twins, which compute in float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from aisp.engine.attention import AttentionMetadata, PagedAttention
from aisp.engine.kv_cache import KVCache, KVCacheSpec
from aisp.kernels.fused_elementwise import rotate_half
from aisp.model.config import ModelConfig
from aisp.model.linear import Linear
from aisp.model.llama import LlamaForCausalLM


@dataclass(frozen=True)
class StepShape:
    num_decodes: int          # decode rows, one token each
    context_len: int          # cached tokens before each decode's new one
    num_prefills: int = 0     # first chunks of new prompts after the decodes
    prefill_len: int = 0      # tokens per prefill chunk
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.num_decodes < 0 or self.num_prefills < 0 or self.num_tokens < 1:
            raise ValueError(f"a step needs at least one token: {self}")
        if self.num_prefills and self.prefill_len < 1:
            raise ValueError(f"prefill_len must be >= 1 when num_prefills > 0: {self}")

    @property
    def num_tokens(self) -> int:
        return self.num_decodes + self.num_prefills * self.prefill_len

    @property
    def num_seqs(self) -> int:
        return self.num_decodes + self.num_prefills

    @property
    def kind(self) -> str:
        return "mixed" if self.num_decodes and self.num_prefills else \
            "decode" if self.num_decodes else "prefill"

    @property
    def label(self) -> str:
        parts = [f"d{self.num_decodes}x{self.context_len}"] if self.num_decodes else []
        if self.num_prefills:
            parts.append(f"p{self.num_prefills}x{self.prefill_len}")
        return f"{self.kind}_{'_'.join(parts)}"

    def kv_tokens_read(self) -> int:
        """Keys each query attends to, summed over the step's sequences (per layer)."""
        causal = self.prefill_len * (self.prefill_len + 1) // 2
        return self.num_decodes * (self.context_len + 1) + self.num_prefills * causal

    def to_dict(self) -> dict:
        return asdict(self) | {"num_tokens": self.num_tokens, "kind": self.kind}


@dataclass
class Step:
    shape: StepShape
    kv_cache: KVCache
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    sample_rows: torch.Tensor    # int64 [num_seqs]: the last token of each sequence

    def hidden(self, model: LlamaForCausalLM, kernels: str) -> torch.Tensor:
        return model(self.input_ids, self.positions,
                     PagedAttention(self.kv_cache, self.metadata, kernels))

    def logits(self, model: LlamaForCausalLM, kernels: str) -> torch.Tensor:
        return model.compute_logits(self.hidden(model, kernels)[self.sample_rows])


class StepGraph:
    """`step.logits(model, kernels)` captured once as a CUDA graph (see the module docstring)."""

    def __init__(self, step: Step, model: LlamaForCausalLM, kernels: str, warmup: int = 2):
        device = step.input_ids.device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; this step lives on {device}")
        if kernels != "triton":
            raise ValueError(f"attention kernels {kernels!r} cannot be captured: the torch twins "
                             f"read lengths on the host; capture with kernels='triton'")
        t0 = time.perf_counter()
        torch.cuda.synchronize(device)
        # Capture empties the allocator's cache (torch.cuda.graph does): empty it first, so the
        # growth of reserved memory is the pool alone, not minus what an earlier user had cached.
        torch.cuda.empty_cache()
        reserved0 = torch.cuda.memory_reserved(device)
        self.pool = torch.cuda.graph_pool_handle()     # private: no other graph shares it
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # Inference mode, like every call of the step: compiled code guards on it.
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):  # on the capture stream: Triton JIT, cuBLAS algorithms
                step.logits(model, kernels)
            with torch.cuda.graph(self.graph, pool=self.pool, stream=stream):
                self.logits = step.logits(model, kernels)
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.capture_s = time.perf_counter() - t0
        self.pool_bytes = torch.cuda.memory_reserved(device) - reserved0

    def replay(self) -> torch.Tensor:
        """Rerun the captured step; its logits, in the graph's buffer (valid until the next)."""
        self.graph.replay()
        return self.logits


def build_step(shape: StepShape, config: ModelConfig, device: torch.device, dtype: torch.dtype,
               seed: int = 0) -> Step:
    """Seeded inputs and KV history for `shape` on `device` (see module docstring)."""
    s, bs = shape, shape.block_size
    gen = torch.Generator().manual_seed(seed)
    decode_blocks = math.ceil((s.context_len + 1) / bs)
    prefill_blocks = math.ceil(s.prefill_len / bs) if s.num_prefills else 0
    num_blocks = s.num_decodes * decode_blocks + s.num_prefills * prefill_blocks
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [perm[i * decode_blocks:(i + 1) * decode_blocks] for i in range(s.num_decodes)]
    base = s.num_decodes * decode_blocks
    tables += [perm[base + i * prefill_blocks: base + (i + 1) * prefill_blocks]
               for i in range(s.num_prefills)]
    positions = [s.context_len] * s.num_decodes + list(range(s.prefill_len)) * s.num_prefills
    owners = list(range(s.num_decodes)) + [s.num_decodes + i for i in range(s.num_prefills)
                                           for _ in range(s.prefill_len)]
    slots = [tables[o][p // bs] * bs + p % bs for o, p in zip(owners, positions)]

    spec = KVCacheSpec(config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
                       bs, dtype)
    kv_cache = KVCache(spec, num_blocks, device)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    for layer in range(config.num_hidden_layers):  # history (and slots the step overwrites)
        for t in kv_cache.layer(layer):
            t.normal_(generator=dev_gen)

    i32 = dict(dtype=torch.int32, device=device)

    def table(rows: list[list[int]]) -> torch.Tensor:
        width = max((len(r) for r in rows), default=1)
        padded = [r + [0] * (width - len(r)) for r in rows]
        return torch.tensor(padded, **i32).reshape(len(rows), width)

    qsl = [i * s.prefill_len for i in range(s.num_prefills + 1)]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        num_decode_tokens=s.num_decodes,
        decode_block_tables=table(tables[:s.num_decodes]),
        decode_context_lens=torch.full((s.num_decodes,), s.context_len + 1, **i32),
        prefill_block_tables=table(tables[s.num_decodes:]),
        prefill_query_start_loc=torch.tensor(qsl, **i32),
        prefill_seq_lens=torch.full((s.num_prefills,), s.prefill_len, **i32),
        prefill_max_query_len=s.prefill_len if s.num_prefills else 0)
    ids = torch.randint(3, config.vocab_size, (s.num_tokens,), generator=gen)
    last = list(range(s.num_decodes)) + [s.num_decodes + (i + 1) * s.prefill_len - 1
                                         for i in range(s.num_prefills)]
    return Step(shape, kv_cache, ids.to(device), torch.tensor(positions, device=device),
                meta, torch.tensor(last, device=device))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight.to(x.dtype) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _linear(x: torch.Tensor, layer: Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return torch.nn.functional.linear(x, layer.weight.to(x.dtype), bias)


def _attend(step: Step, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            window: int | None) -> torch.Tensor:
    """Store the step's K/V into a float64 copy of the layer's cache, then each sequence's
    queries attend to its keys at positions <= their own (and > position - window)."""
    s, bs = step.shape, step.shape.block_size
    k_cache, v_cache = (t.to(q.dtype, copy=True).flatten(0, 1)
                        for t in step.kv_cache.layer(layer_idx))
    slots = step.metadata.slot_mapping
    k_cache[slots], v_cache[slots] = k, v
    m = step.metadata
    tables = m.decode_block_tables.tolist() + m.prefill_block_tables.tolist()
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    rows = [(i, i + 1, s.context_len) for i in range(s.num_decodes)]
    rows += [(s.num_decodes + j * s.prefill_len, s.num_decodes + (j + 1) * s.prefill_len, 0)
             for j in range(s.num_prefills)]
    for seq, (start, end, first_pos) in enumerate(rows):
        n = first_pos + end - start                    # keys of this sequence after the store
        key_slots = torch.tensor([tables[seq][p // bs] * bs + p % bs for p in range(n)],
                                 device=q.device)
        keys = k_cache[key_slots].repeat_interleave(group, 1)     # [n, Hq, D]
        values = v_cache[key_slots].repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end], keys) * q.shape[-1] ** -0.5
        q_pos = torch.arange(first_pos, first_pos + end - start, device=q.device)[:, None]
        k_pos = torch.arange(n, device=q.device)[None, :]
        hidden = (k_pos > q_pos) | ((k_pos <= q_pos - window) if window else False)
        scores = scores.masked_fill(hidden, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)
    return out


@torch.inference_mode()
def reference_logits(model: LlamaForCausalLM, step: Step) -> torch.Tensor:
    """float64 logits [num_seqs, vocab] of `step`: the decoder's math written out in float64
    (independent of the model's forward and of the float32-internal kernel twins); RoPE's
    cos/sin table is the model's float32 one, applied in float64."""
    cfg, f64 = model.config, torch.float64
    x = model.embed_tokens.weight[step.input_ids].to(f64)
    cos, sin = (t.to(f64) for t in model.rotary_emb.cos_sin(step.positions))
    num_tokens = x.shape[0]
    for i, layer in enumerate(model.layers):
        a = layer.self_attn
        h = _rms(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q, k, v = _linear(h, a.qkv_proj).split([a.q_size, a.kv_size, a.kv_size], dim=-1)
        q = q.reshape(num_tokens, a.num_heads, a.head_dim)
        k = k.reshape(num_tokens, a.num_kv_heads, a.head_dim)
        v = v.reshape(num_tokens, a.num_kv_heads, a.head_dim)
        if a.q_norm is not None:
            eps = cfg.rms_norm_eps
            q, k = _rms(q, a.q_norm.weight, eps), _rms(k, a.k_norm.weight, eps)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        attn = _attend(step, i, q, k, v, a.sliding_window)
        x = x + _linear(attn.reshape(num_tokens, -1), a.o_proj)
        h = _rms(x, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
        gate, up = _linear(h, layer.mlp.gate_up_proj).chunk(2, dim=-1)
        x = x + _linear(torch.nn.functional.silu(gate) * up, layer.mlp.down_proj)
    x = _rms(x[step.sample_rows], model.norm.weight, cfg.rms_norm_eps)
    return x @ model.lm_head_weight.to(f64).T
