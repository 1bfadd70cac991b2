"""store_kv (Triton) vs store_kv_ref: slots written exactly, -1 padding slots left untouched."""

from __future__ import annotations

import pytest
import torch

from aisp.kernels.kv_cache_ops import store_kv, store_kv_ref
from tests.kernels.paged_kv_helpers import randn, requires_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _check_store(num_blocks, block_size, num_kv_heads, head_dim, dtype, num_tokens, fused_qkv=False):
    """Scatter into a random cache through a shuffled slot mapping with -1 holes; compare with the ref."""
    gen = torch.Generator().manual_seed(7)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = randn(*shape, dtype=dtype, device=DEVICE, seed=1)
    v_cache = randn(*shape, dtype=dtype, device=DEVICE, seed=2)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::3] = -1  # every third token is padding
    slot_mapping = slots.to(DEVICE)
    if fused_qkv:  # k and v as strided views of one projection output, as the model produces them
        qkv = randn(num_tokens, 3 * num_kv_heads * head_dim, dtype=dtype, device=DEVICE, seed=3)
        width = num_kv_heads * head_dim
        k = qkv[:, width: 2 * width].view(num_tokens, num_kv_heads, head_dim)
        v = qkv[:, 2 * width:].view(num_tokens, num_kv_heads, head_dim)
        assert not k.is_contiguous()
    else:
        k = randn(num_tokens, num_kv_heads, head_dim, dtype=dtype, device=DEVICE, seed=4)
        v = randn(num_tokens, num_kv_heads, head_dim, dtype=dtype, device=DEVICE, seed=5)

    k_want, v_want = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, k_want, v_want, slot_mapping)
    k_before = k_cache.clone()
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    # A copy is exact in every dtype: compare bit for bit.
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)

    written = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=DEVICE)
    written[slot_mapping[slot_mapping >= 0]] = True
    untouched = ~written.view(num_blocks, block_size)
    assert torch.equal(k_cache[untouched], k_before[untouched]), "store_kv touched slots no token maps to"
    keep = slot_mapping >= 0
    b, o = slot_mapping[keep] // block_size, slot_mapping[keep] % block_size
    assert torch.equal(k_cache[b, o], k[keep]) and torch.equal(v_cache[b, o], v[keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(1, 16), (2, 32), (3, 64)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_store_kv_matches_reference(block_size, num_kv_heads, head_dim, dtype):
    _check_store(6, block_size, num_kv_heads, head_dim, dtype, num_tokens=11)


def test_store_kv_from_fused_qkv_views():
    _check_store(5, 4, 2, 16, torch.float16, num_tokens=9, fused_qkv=True)


def test_store_kv_all_padding_is_a_noop():
    k_cache = randn(2, 4, 1, 16, dtype=torch.float32, device=DEVICE)
    v_cache = randn(2, 4, 1, 16, dtype=torch.float32, device=DEVICE, seed=2)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    k = randn(3, 1, 16, dtype=torch.float32, device=DEVICE, seed=3)
    store_kv(k, k, k_cache, v_cache, torch.full((3,), -1, dtype=torch.int64, device=DEVICE))
    assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before)


def test_store_kv_rejects_mismatches():
    k_cache = randn(2, 4, 2, 16, dtype=torch.float32, device=DEVICE)
    k = randn(3, 2, 16, dtype=torch.float32, device=DEVICE)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match="num_kv_heads, head_dim"):
        store_kv(k[:, :1], k[:, :1], k_cache, k_cache, slots)
    with pytest.raises(ValueError, match="one slot per token"):
        store_kv(k, k, k_cache, k_cache, slots[:2])
    with pytest.raises(ValueError, match="dtype"):
        store_kv(k.half(), k.half(), k_cache, k_cache, slots)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_store_kv_cuda_real_shapes(dtype):
    _check_store(512, 16, 8, 128, dtype, num_tokens=3000)
    _check_store(64, 16, 8, 128, dtype, num_tokens=700, fused_qkv=True)
