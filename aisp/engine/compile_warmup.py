"""The engine's compile switch: compile the model, then pay the compile before serving.

`compile_for_engine(model, mode, kv_cache, kernels)` applies `aisp.model.compile.apply_compile`
and, for a compiled mode, runs the warm-up forwards that compile every graph a step can need,
timed by a `CompileWatch`: the returned `CompileInfo` carries the compile seconds, whether the
caches were warm and the graph count, which later steps must not change (`recompiles`).

Which forwards: attention is opaque to the compiler (eager between the regions, or one op in
the full graph), so what a step compiles depends only on its number of tokens, never on its
mix of decodes and prefill chunks. The token dimension is dynamic with sizes 0 and 1
specialised (see aisp.model.compile), so one step of 1 token and one of 2 compile everything.
They are decode-only steps whose rows are all inert, like the padding rows of a CUDA-graph
batch (aisp.engine.cuda_graphs): slot -1 (the KV store skips it) and context length 0 (the
decode kernel reads nothing), so the warm-up writes no KV block.
"""

from __future__ import annotations

import torch

from aisp.engine.attention import AttentionMetadata, PagedAttention
from aisp.engine.kv_cache import KVCache
from aisp.model.compile import CompileInfo, CompileWatch, apply_compile
from aisp.model.llama import LlamaForCausalLM

WARMUP_NUM_TOKENS = (1, 2)   # one size-1 graph, one dynamic graph for every size >= 2


def inert_decode_metadata(num_tokens: int, device: torch.device) -> AttentionMetadata:
    """A decode-only step of `num_tokens` padding rows: reads and writes no KV (module doc)."""
    i32 = dict(dtype=torch.int32, device=device)
    return AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        num_decode_tokens=num_tokens,
        decode_block_tables=torch.zeros(num_tokens, 1, **i32),
        decode_context_lens=torch.zeros(num_tokens, **i32),
        prefill_block_tables=torch.zeros(0, 1, **i32),
        prefill_query_start_loc=torch.zeros(1, **i32),
        prefill_seq_lens=torch.zeros(0, **i32))


@torch.inference_mode()   # the runner's mode: Dynamo guards on it
def compile_for_engine(model: LlamaForCausalLM, mode: str, kv_cache: KVCache,
                       kernels: str) -> CompileInfo:
    info = apply_compile(model, mode)
    if not info.compiled:
        return info
    device = kv_cache.device
    watch = CompileWatch(model, info)
    with watch:
        for n in WARMUP_NUM_TOKENS:
            zeros = torch.zeros(n, dtype=torch.int64, device=device)
            model(zeros, zeros.clone(), PagedAttention(kv_cache, inert_decode_metadata(n, device),
                                                       kernels))
    return watch.result()
