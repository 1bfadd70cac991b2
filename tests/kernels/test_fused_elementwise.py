"""Fused elementwise kernels (Triton) vs their torch twins, and the model's switch between them.

add+RMSNorm, in-place RoPE and SiLU·mul on fresh random data (never zeros), float32 and float16
under the interpreter (bfloat16 on a GPU only), across ragged token counts (0 and 1 included),
hidden sizes that are not powers of two, GQA head counts, head dims 16..128 and the strided
views of a fused qkv projection that the model hands them.
"""

from __future__ import annotations

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from aisp.kernels.fused_elementwise import (rms_norm, rms_norm_ref, rotary_, rotary_ref, silu_and_mul,
                                            silu_and_mul_ref)
from aisp.model import VarlenCausalAttention, build_synthetic
from aisp.model.layers import RMSNorm, RotaryEmbedding, SiluAndMul
from tests.kernels.paged_kv_helpers import randn, requires_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_DTYPES = [torch.float32, torch.float16]

# Kernel vs twin, in units in the last place of the output dtype (rotary_ is always bit-exact, and
# silu_and_mul is on GPUs; see the kernels' module docstring).
MAX_ULP = {
    # Same formula; the sum of squares is reduced in another order and rsqrt (and, in the
    # interpreter, exp) are other implementations, so only the last float32 bits may differ.
    torch.float32: 8,
    # The float32 intermediate differs in its last bits, which rarely rounds the 16-bit value the
    # other way: one ulp, stretched to at most two by the weight (or up) multiply that follows.
    torch.float16: 2,
    torch.bfloat16: 2,
}
MAX_MISMATCH_FRACTION = 0.01  # 16-bit outputs: such flips are rare; almost every element is bit-exact


def ulp_distance(got: torch.Tensor, want: torch.Tensor) -> int:
    """Largest distance in representable values of the dtype (adjacent floats are 1 apart)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.numel() == 0:
        return 0
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[got.dtype]
    magnitude = (1 << (8 * got.element_size() - 1)) - 1

    def ordered(t: torch.Tensor) -> torch.Tensor:  # sign-magnitude bit patterns -> a number line
        i = t.contiguous().view(bits).long()
        return torch.where(i < 0, -(i & magnitude), i)

    return int((ordered(got) - ordered(want)).abs().max())


def assert_matches_twin(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    ulps = ulp_distance(got, want)
    assert ulps <= MAX_ULP[got.dtype], f"{ulps} ulp from the twin in {got.dtype}"
    if got.dtype != torch.float32 and got.numel():
        mismatched = (got != want).float().mean().item()
        assert mismatched <= MAX_MISMATCH_FRACTION, f"{mismatched:.2%} of elements differ from the twin"


def strided_rows(num_tokens: int, width: int, dtype: torch.dtype, seed: int, pad: int = 8) -> torch.Tensor:
    """[num_tokens, width] view of a wider buffer: contiguous last dim, row stride width + pad."""
    return randn(num_tokens, width + pad, dtype=dtype, device=DEVICE, seed=seed)[:, :width]


def norm_weight(hidden: int, dtype: torch.dtype, seed: int = 9) -> torch.Tensor:
    """Around 1 like trained norm weights, but not 1, so the weight multiply's rounding is exercised."""
    return (1.0 + 0.2 * randn(hidden, dtype=torch.float32, seed=seed)).to(dtype=dtype, device=DEVICE)


# -- add + RMSNorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_tokens,hidden", [(0, 64), (1, 48), (5, 96), (3, 4096)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_twin(num_tokens, hidden, with_residual, dtype):
    x = strided_rows(num_tokens, hidden, dtype, seed=1)
    weight = norm_weight(hidden, dtype)
    x_before = x.clone()
    if not with_residual:
        assert_matches_twin(rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5))
    else:
        residual = randn(num_tokens, hidden, dtype=dtype, device=DEVICE, seed=2)
        normed, summed = rms_norm(x, weight, 1e-5, residual)
        want_normed, want_summed = rms_norm_ref(x, weight, 1e-5, residual)
        assert torch.equal(summed, want_summed)  # one add, rounded once, in both
        assert_matches_twin(normed, want_normed)
    assert torch.equal(x, x_before), "rms_norm must not write its input"


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 16), (8, 2, 32), (6, 1, 64), (4, 4, 128)])
def test_per_head_rms_norm_on_fused_qkv_views(num_heads, num_kv_heads, head_dim, dtype):
    """Qwen3's q_norm/k_norm: [T, heads, head_dim] views with a token stride of the whole qkv row."""
    num_tokens, q_size, kv_size = 5, num_heads * head_dim, num_kv_heads * head_dim
    qkv = randn(num_tokens, q_size + 2 * kv_size, dtype=dtype, device=DEVICE, seed=3)
    q = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size:q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    assert not q.is_contiguous() and not k.is_contiguous()
    weight = norm_weight(head_dim, dtype)
    for x in (q, k):
        assert_matches_twin(rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6))


# -- rotary --------------------------------------------------------------------------------------

def fused_qkv(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype, pad=8):
    """(buffer, q, k): q and k as the model slices them out of one [T, q | k | v | pad] buffer."""
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    buf = randn(num_tokens, q_size + 2 * kv_size + pad, dtype=dtype, device=DEVICE, seed=4)
    q = buf[:, :q_size].view(num_tokens, num_q_heads, head_dim)
    k = buf[:, q_size:q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    return buf, q, k


def random_positions(num_tokens: int, max_positions: int, seed: int = 5) -> torch.Tensor:
    """Out of order, with repeats (several sequences' tokens flattened)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, max_positions, (num_tokens,), generator=gen).to(DEVICE)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_tokens,num_q_heads,num_kv_heads,head_dim", [
    (7, 4, 4, 16), (7, 8, 2, 32), (7, 6, 1, 64), (5, 32, 8, 128),
    (1, 8, 2, 64), (0, 4, 2, 16), (9, 5, 5, 48),  # one token, none, a head_dim whose half is not 2^n
])
def test_rotary_in_place_matches_twin(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype):
    max_positions = 40
    buf, q, k = fused_qkv(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype)
    # A random table (cos and sin halves unequal, unlike a real one), so any mixing up of the
    # four D/2 slices of a row shows.
    cache = randn(max_positions, 2 * head_dim, dtype=torch.float32, device=DEVICE, seed=6)
    positions = random_positions(num_tokens, max_positions)
    want_q, want_k = rotary_ref(q, k, cache, positions)
    untouched = buf[:, q.shape[1] * head_dim + k.shape[1] * head_dim:].clone()  # v and the pad

    got_q, got_k = rotary_(q, k, cache, positions)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr(), "not in place"
    # Same float32 ops, rounded one at a time, then one cast: bit-exact in every dtype.
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(buf[:, -untouched.shape[1]:], untouched), "rotary_ wrote outside q and k"


def test_rotary_with_the_model_cache_is_a_rotation():
    """The real RotaryEmbedding table: position 0 is the identity, norms are kept."""
    rope = RotaryEmbedding(head_dim=32, max_positions=64, theta=10_000.0).to(DEVICE)
    _, q, k = fused_qkv(4, 4, 2, 32, torch.float32)
    before = q.clone()
    rotary_(q, k, rope.cos_sin_cache, torch.tensor([0, 63, 5, 5], device=DEVICE))
    assert torch.equal(q[0], before[0])
    torch.testing.assert_close(q.norm(dim=-1), before.norm(dim=-1))


def test_rotary_ref_returns_new_tensors():
    _, q, k = fused_qkv(3, 2, 1, 16, torch.float32)
    before = q.clone()
    cache = randn(8, 32, dtype=torch.float32, device=DEVICE, seed=6)
    new_q, _ = rotary_ref(q, k, cache, torch.tensor([1, 2, 3], device=DEVICE))
    assert torch.equal(q, before) and not torch.equal(new_q, before)


# -- SiLU · mul ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_tokens,intermediate", [(0, 64), (1, 48), (5, 96), (3, 1500), (2, 14336)])
def test_silu_and_mul_matches_twin(num_tokens, intermediate, dtype):
    """1500 and 14336 cross several 1024-column tiles, the last one ragged for 1500."""
    gate_up = strided_rows(num_tokens, 2 * intermediate, dtype, seed=7)
    assert_matches_twin(silu_and_mul(gate_up), silu_and_mul_ref(gate_up))


# -- argument checks -----------------------------------------------------------------------------

def test_kernels_reject_bad_arguments():
    x = randn(4, 32, dtype=torch.float32, device=DEVICE)
    w = norm_weight(32, torch.float32)
    with pytest.raises(ValueError, match="weight dtype torch.float16 must match"):
        rms_norm(x, w.half(), 1e-5)
    with pytest.raises(ValueError, match=r"weight must be \[32\]"):
        rms_norm(x, w[:16], 1e-5)
    with pytest.raises(ValueError, match="residual must match x"):
        rms_norm(x, w, 1e-5, x[:2])
    with pytest.raises(ValueError, match="contiguous last dim"):
        rms_norm(x.t(), norm_weight(4, torch.float32), 1e-5)

    _, q, k = fused_qkv(3, 4, 2, 16, torch.float32)
    cache = randn(8, 32, dtype=torch.float32, device=DEVICE, seed=6)
    pos = torch.tensor([1, 2, 3], device=DEVICE)
    with pytest.raises(ValueError, match="share a dtype"):
        rotary_(q, k.half(), cache, pos)
    with pytest.raises(ValueError, match=r"2 \* head_dim = 32"):
        rotary_(q, k, cache[:, :16], pos)
    with pytest.raises(ValueError, match="must be float32"):
        rotary_(q, k, cache.half(), pos)
    with pytest.raises(ValueError, match=r"positions must be int64 \(or int32\) \[3\]"):
        rotary_(q, k, cache, pos[:2])
    every_other = randn(3, 6, 32, dtype=torch.float32, device=DEVICE)[..., ::2]  # last-dim stride 2
    with pytest.raises(ValueError, match="contiguous last dim"):
        rotary_(every_other[:, :4], every_other[:, 4:], cache, pos)

    with pytest.raises(ValueError, match=r"2 \* intermediate"):
        silu_and_mul(randn(2, 7, dtype=torch.float32, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        silu_and_mul(torch.ones(2, 8, dtype=torch.int32, device=DEVICE))


# -- the model switch ----------------------------------------------------------------------------

def _model_with_random_norms(preset: str):
    model, config = build_synthetic(preset, DEVICE, torch.float32, seed=0)
    with torch.no_grad():  # presets init norm weights to 1; trained ones are not
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * randn(*p.shape, dtype=torch.float32, device=DEVICE, seed=11))
    return model, config


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])  # tiny-qwen3: per-head q/k norm, tied head
def test_model_triton_elementwise_matches_torch(preset):
    """Two sequences flattened (5 and 3 tokens): logits of every token agree in float32."""
    model, config = _model_with_random_norms(preset)
    seq_lens = [5, 3]
    input_ids = torch.randint(0, config.vocab_size, (sum(seq_lens),),
                              generator=torch.Generator().manual_seed(3)).to(DEVICE)
    positions = torch.cat([torch.arange(n) for n in seq_lens]).to(DEVICE)

    def logits(kernels: str) -> torch.Tensor:
        model.set_elementwise_kernels(kernels)
        with torch.inference_mode():
            hidden = model(input_ids, positions, VarlenCausalAttention.from_seq_lens(seq_lens))
            return model.compute_logits(hidden)

    want = logits("torch")
    got = logits("triton")
    # Only the last float32 bits of each norm and SiLU differ; through two layers that stays ~1e-6.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_set_elementwise_kernels_reaches_every_layer_and_validates():
    model, _ = build_synthetic("tiny-qwen3", DEVICE, torch.float32)
    model.set_elementwise_kernels("triton")
    users = [m for m in model.modules() if isinstance(m, (RMSNorm, SiluAndMul, RotaryEmbedding))]
    # per layer: input, post-attention, q and k norms, the MLP activation; plus final norm and rope
    assert len(users) == 5 * model.config.num_hidden_layers + 2
    assert model.elementwise_kernels == "triton" and all(m.elementwise_kernels == "triton" for m in users)
    with pytest.raises(ValueError, match="elementwise kernels 'cuda' unknown; choose one of torch, triton"):
        model.set_elementwise_kernels("cuda")


def test_engine_passes_its_attention_kernels_to_the_model():
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    prompts = [[5, 9, 200, 31, 7], [44, 3]]
    runs = {}
    for kernels in ("torch", "triton"):
        engine = LLMEngine(EngineConfig(model="tiny", device=DEVICE, dtype="float32",
                                        attention_kernels=kernels, block_size=4))
        assert engine.model.elementwise_kernels == kernels
        runs[kernels] = [o.output_token_ids for o in engine.generate(prompts, params)]
    assert runs["triton"] == runs["torch"]


# -- bfloat16 at Llama-3-8B sizes (GPU) ----------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_llama8b_shapes_on_gpu(dtype):
    """T=256 decode batch, H=4096, I=14336, 32 q / 8 kv heads of 128.

    rotary_, silu_and_mul and the residual sum are bit-exact: the same float32 ops with the same
    roundings (libdevice's expf is torch's). The normalised output is within MAX_ULP with almost
    every element bit-exact: its sum of squares is reduced in another order (on an H200, bf16
    came out bit-exact and fp16 within 2 ulp on 5e-5 of the elements).
    """
    num_tokens, hidden, intermediate, num_heads, num_kv_heads, head_dim = 256, 4096, 14336, 32, 8, 128
    x = randn(num_tokens, hidden, dtype=dtype, device=DEVICE, seed=1)
    residual = randn(num_tokens, hidden, dtype=dtype, device=DEVICE, seed=2)
    weight = norm_weight(hidden, dtype)
    normed, summed = rms_norm(x, weight, 1e-5, residual)
    want_normed, want_summed = rms_norm_ref(x, weight, 1e-5, residual)
    assert torch.equal(summed, want_summed)
    assert_matches_twin(normed, want_normed)

    gate_up = randn(num_tokens, 2 * intermediate, dtype=dtype, device=DEVICE, seed=3)
    assert torch.equal(silu_and_mul(gate_up), silu_and_mul_ref(gate_up))

    rope = RotaryEmbedding(head_dim, 8192, 500_000.0).to(DEVICE)
    buf, q, k = fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype, pad=0)
    positions = random_positions(num_tokens, 8192)
    want_q, want_k = rotary_ref(q, k, rope.cos_sin_cache, positions)
    v_before = buf[:, (num_heads + num_kv_heads) * head_dim:].clone()
    rotary_(q, k, rope.cos_sin_cache, positions)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(buf[:, (num_heads + num_kv_heads) * head_dim:], v_before)

    q_weight = norm_weight(head_dim, dtype)  # Qwen3-style per-head norm of the strided q view
    assert_matches_twin(rms_norm(q, q_weight, 1e-6), rms_norm_ref(q, q_weight, 1e-6))
