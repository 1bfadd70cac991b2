"""KVCache: layout, sizing from a byte budget, and the error when one max-length request cannot fit."""

from __future__ import annotations

import pytest
import torch

from aisp.engine.block_manager import slot_of
from aisp.engine.kv_cache import KVCache, KVCacheSpec, kv_cache_bytes_per_block

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float16)


def test_bytes_per_block():
    # K and V x 2 layers x 4 tokens x 2 heads x 8 dims x 2 bytes
    assert kv_cache_bytes_per_block(2, 2, 8, 4, torch.float16) == 2 * 2 * 4 * 2 * 8 * 2 == 512
    assert SPEC.bytes_per_block == 512 and SPEC.bytes_per_token == 128
    assert kv_cache_bytes_per_block(32, 8, 128, 16, torch.bfloat16) == 2 * 1024 * 1024  # Llama-3-8B: 128 KiB/token
    assert kv_cache_bytes_per_block(1, 1, 1, 1, torch.float32) == 8


def test_layout_views_share_one_buffer():
    cache = KVCache(SPEC, num_blocks=5)
    assert len(cache.k_cache) == len(cache.v_cache) == 2
    k0, v0 = cache.layer(0)
    assert k0.shape == (5, 4, 2, 8) and k0.dtype == torch.float16 and k0.is_contiguous()
    assert cache.nbytes == 5 * SPEC.bytes_per_block and cache.capacity_tokens == 20
    # A write through one layer's view lands in the shared buffer and nowhere else.
    block_ids, position = [3, 1], 6
    slot = slot_of(block_ids, cache.block_size, position)
    cache.k_cache[1].view(-1, 2, 8)[slot] = 7.0
    assert torch.all(cache.k_cache[1][1, 2] == 7.0)  # block 1, offset 2 == position 6
    assert cache.k_cache[1].data_ptr() == cache.k_cache[0].data_ptr() + 5 * 4 * 2 * 8 * 2
    assert "blocks=5x4" in repr(cache)


def test_from_memory_with_a_cpu_budget():
    cache = KVCache.from_memory(SPEC, max_model_len=16, budget_bytes=10 * 512 + 100)
    assert cache.num_blocks == 10


def test_budget_too_small_for_one_request_says_so():
    with pytest.raises(ValueError, match=r"holds 3 blocks \(12 tokens\) but one request of "
                                         r"max_model_len=16 tokens needs 4 blocks"):
        KVCache.from_memory(SPEC, max_model_len=16, budget_bytes=3 * 512)


def test_cpu_needs_an_explicit_budget():
    with pytest.raises(ValueError, match="pass budget_bytes"):
        KVCache.from_memory(SPEC, max_model_len=16)


def test_spec_validation():
    with pytest.raises(ValueError, match="KVCacheSpec.head_dim is 0"):
        KVCacheSpec(num_layers=1, num_kv_heads=1, head_dim=0, block_size=4)
    with pytest.raises(ValueError, match="num_blocks is 0"):
        KVCache(SPEC, num_blocks=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sizing from free memory needs CUDA")
def test_from_free_cuda_memory():
    free_before, _ = torch.cuda.mem_get_info()
    cache = KVCache.from_memory(SPEC, max_model_len=16, device="cuda", memory_fraction=0.01)
    expected = int(free_before * 0.01) // SPEC.bytes_per_block
    assert abs(cache.num_blocks - expected) <= expected // 100 + 1 and cache.k_cache[0].is_cuda
    with pytest.raises(ValueError, match="memory_fraction is 1.5"):
        KVCache.from_memory(SPEC, max_model_len=16, device="cuda", memory_fraction=1.5)
