"""RoPE frequencies against transformers' own, and varlen attention against an obvious reference."""

from __future__ import annotations

import math

import pytest
import torch

from aisp.model import RopeScaling, VarlenCausalAttention
from aisp.model.rope import RotaryEmbedding, rope_inv_freq


@pytest.mark.parametrize("scaled", [False, True])
def test_inv_freq_matches_transformers(scaled: bool) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    scaling = None
    if scaled:
        scaling = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope,
                                   max_position_embeddings=131072)
    ours = rope_inv_freq(64, 500000.0, scaling)
    if scaled:
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        assert not torch.allclose(ours, rope_inv_freq(64, 500000.0)), "scaling must change something"
    else:
        want = 1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))
    torch.testing.assert_close(ours, want, rtol=0, atol=0)


def test_rotary_is_a_rotation_by_position() -> None:
    rope = RotaryEmbedding(head_dim=8, max_positions=64, theta=10000.0)
    q, k = torch.randn(5, 3, 8), torch.randn(5, 1, 8)
    pos = torch.tensor([0, 7, 3, 63, 1])
    q2, k2 = rope(pos, q, k)
    assert torch.equal(q2[0], q[0])  # position 0 is the identity
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))  # rotations keep length
    # Relative property: <R(m)q, R(n)k> depends only on m - n.
    a, _ = rope(torch.tensor([10]), q[:1], k[:1])
    b, _ = rope(torch.tensor([4]), k[:1].expand(1, 3, 8), k[:1])
    c, _ = rope(torch.tensor([16]), q[:1], k[:1])
    d, _ = rope(torch.tensor([10]), k[:1].expand(1, 3, 8), k[:1])
    torch.testing.assert_close((a * b).sum(-1), (c * d).sum(-1), rtol=1e-4, atol=1e-4)


def test_rope_cache_stays_float32_through_module_to() -> None:
    rope = RotaryEmbedding(head_dim=8, max_positions=16, theta=10000.0).to(torch.bfloat16)
    assert rope.cos_sin_cache.dtype == torch.float32


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
    """Explicit masked softmax, one sequence at a time, kv heads repeated for GQA."""
    out, start = [], 0
    group = q.shape[1] // k.shape[1]
    for n in seq_lens:
        qs, ks, vs = q[start:start + n], k[start:start + n], v[start:start + n]
        ks, vs = ks.repeat_interleave(group, dim=1), vs.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(q.shape[-1])
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out.append(torch.einsum("hqk,khd->qhd", probs, vs))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("num_q_heads, num_kv_heads, head_dim", [(4, 4, 16), (8, 2, 8), (6, 1, 32)])
def test_varlen_attention_matches_reference(num_q_heads: int, num_kv_heads: int, head_dim: int) -> None:
    seq_lens = [3, 0, 11, 1, 6]
    total = sum(seq_lens)
    q = torch.randn(total, num_q_heads, head_dim)
    k, v = torch.randn(total, num_kv_heads, head_dim), torch.randn(total, num_kv_heads, head_dim)
    got = VarlenCausalAttention.from_seq_lens(seq_lens).forward(0, q, k, v)
    torch.testing.assert_close(got, reference_attention(q, k, v, seq_lens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 4, 11, 50])
def test_varlen_attention_window_matches_float64_math(window: int) -> None:
    # Each packed sequence against float64 windowed causal attention (aisp.kernels.attention).
    from aisp.kernels.attention import reference_causal_attention
    seq_lens = [3, 0, 17, 1, 9]
    q, k, v = torch.randn(30, 4, 16), torch.randn(30, 2, 16), torch.randn(30, 2, 16)
    got = VarlenCausalAttention.from_seq_lens(seq_lens).forward(0, q, k, v, sliding_window=window)
    start = 0
    for n in seq_lens:
        if n:
            span = [t[start:start + n].transpose(0, 1)[None] for t in (q, k, v)]
            want = reference_causal_attention(*span, 0.25, sliding_window=window)[0].transpose(0, 1)
            torch.testing.assert_close(got[start:start + n].double(), want, rtol=1e-5, atol=1e-5)
        start += n
    plain = VarlenCausalAttention.from_seq_lens(seq_lens).forward(0, q, k, v)
    assert (window >= 17) == torch.allclose(plain, got), "the window changes exactly the long rows"


def test_varlen_attention_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"cu_seqlens.*\[0, 5, 3\]"):
        VarlenCausalAttention(torch.tensor([0, 5, 3]))
    attn = VarlenCausalAttention([0, 4])
    with pytest.raises(ValueError, match="q has 5 tokens but cu_seqlens covers 4"):
        attn.forward(0, torch.randn(5, 2, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8))
