"""Sliding-window models through the real engine against HF transformers' `generate`.

Tiny random checkpoints written by transformers itself, each with prompts several windows long:
- Mistral, `sliding_window` 8 on every layer (HF's MistralModel builds one sliding mask);
- Qwen2, `use_sliding_window` with `max_window_layers` 1: layer 0 full, layer 1 windowed;
- Qwen3, explicit `layer_types` [sliding, full] with a window of 6.
HF runs with its default attention (sdpa) and its own cache; the `hf_window_matters` check makes
sure its reference really applies the window (greedy tokens change without it), so equal tokens
here mean the engine applied the same window to the same layers, with block size 4 (the
window spans 2 blocks, and 1.5), batched, under chunked prefill, prefix caching, the padded
CUDA-graph decode buffers and, on the GPU, captured graphs.
"""

from __future__ import annotations

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from aisp.model import VarlenCausalAttention, load_model
from tests.kernels.paged_kv_helpers import requires_cuda

transformers = pytest.importorskip("transformers")

NEW = 10
GREEDY = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
# eos None: HF's generate then never stops early, like ignore_eos here.
COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=None, pad_token_id=0)
FAMILIES = {
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=8)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(sliding_window=8, use_sliding_window=True, max_window_layers=1)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(sliding_window=6, use_sliding_window=True,
                   layer_types=["sliding_attention", "full_attention"])),
}
WINDOWS = {"mistral": [8, 8], "qwen2": [None, 8], "qwen3": [6, None]}


def build(family: str, windowed: bool = True, seed: int = 0) -> torch.nn.Module:
    """A random float32 HF model; `windowed=False` gives the same weights with no window at all."""
    config_cls, model_cls, window = FAMILIES[family]
    if not windowed:
        window = dict(sliding_window=None, use_sliding_window=False) if family != "mistral" \
            else dict(sliding_window=None)
    config = config_cls(**COMMON, **window)
    config.architectures = [model_cls.__name__]
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


def hf_generate(model, prompt: list[int], n: int = NEW) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n, pad_token_id=0)
    assert out.shape[1] == len(prompt) + n, "HF stopped early; the comparison needs n tokens"
    return out[0, len(prompt):].tolist()


def prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 160, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request, tmp_path_factory):
    family = request.param
    model = build(family)
    folder = tmp_path_factory.mktemp(f"swa-{family}")
    model.save_pretrained(folder)
    return family, folder, model


def engine(folder, **kw) -> LLMEngine:
    kw = {"device": "cpu", "dtype": "float32", "block_size": 4, **kw}
    return LLMEngine(EngineConfig(model=str(folder), **kw))


def test_checkpoint_windows_the_layers_hf_windows(checkpoint):
    family, folder, model = checkpoint
    eng = engine(folder)
    assert [layer.self_attn.sliding_window for layer in eng.model.layers] == WINDOWS[family]
    assert eng.max_model_len == 128  # max_position_embeddings, not the window


def test_hf_window_matters(checkpoint):
    """The reference is only a test of the window if HF's tokens change without it."""
    family, _, model = checkpoint
    plain = build(family, windowed=False)
    plain.load_state_dict(model.state_dict())
    ps = prompts(0, (19, 33))
    assert any(hf_generate(model, p) != hf_generate(plain, p) for p in ps), family


def test_cache_free_varlen_logits_match_hf(checkpoint):
    """The model's other backend (VarlenCausalAttention, packed whole sequences, no cache)."""
    family, folder, model = checkpoint
    ours, config = load_model(folder, "cpu", torch.float32)
    seqs = [torch.tensor(p) for p in prompts(6, (30, 7, 21))]
    attn = VarlenCausalAttention.from_seq_lens([len(s) for s in seqs])
    with torch.no_grad():
        hidden = ours(torch.cat(seqs), torch.cat([torch.arange(len(s)) for s in seqs]), attn)
        got = ours.compute_logits(hidden).split([len(s) for s in seqs])
        for seq, logits in zip(seqs, got):
            want = model(seq[None]).logits[0]
            torch.testing.assert_close(logits, want, atol=1e-4 * want.abs().max().item(), rtol=0)


def test_batched_greedy_matches_hf(checkpoint):
    family, folder, model = checkpoint
    ps = prompts(0, (19, 5, 33, 12))  # past the window, inside it, many windows long
    outs = engine(folder).generate(ps, GREEDY)
    for p, out in zip(ps, outs):
        assert list(out.output_token_ids) == hf_generate(model, p), f"{family}: prompt of {len(p)}"


def test_chunked_prefill_and_prefix_cache_match_hf(checkpoint):
    family, folder, model = checkpoint
    # Budget 7: chunks of odd sizes start mid-block and mid-window, mixed with decodes; the
    # second batch shares a 24-token prefix, so its prefill continues cached blocks.
    shared = prompts(1, (24,))[0]
    first = prompts(2, (27, 6, 14))
    rest = [shared + tail for tail in prompts(3, (5, 11))]
    eng = engine(folder, max_num_batched_tokens=7, cuda_graphs="full", graph_capture="off", max_num_seqs=4)
    mixed = []
    eng.step_listeners.append(lambda s: mixed.append(
        s.scheduler.num_prefill_tokens > 0 and s.scheduler.num_decode_tokens > 0))
    outs = eng.generate(first + [shared], GREEDY)
    hits = eng.block_manager.prefix_cache_hits
    outs += eng.generate(rest, GREEDY)
    assert any(mixed), "a small budget must produce mixed prefill + decode steps"
    assert eng.block_manager.prefix_cache_hits >= hits + 2 * 24
    for p, out in zip(first + [shared] + rest, outs):
        assert list(out.output_token_ids) == hf_generate(model, p), f"{family}: prompt of {len(p)}"


def test_triton_kernels_through_the_engine_match_hf(checkpoint):
    """The windowed Triton kernels (interpreter on a CPU) in the engine: chunked prefill, then
    decodes through the padded graph buffers."""
    family, folder, model = checkpoint
    ps = prompts(4, (21, 9))
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    # The interpreter needs the CPU; with a GPU present the same kernels run compiled there.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    outs = engine(folder, device=device, attention_kernels="triton", max_num_batched_tokens=16,
                  cuda_graphs="full", graph_capture="off", max_num_seqs=2).generate(ps, params)
    for p, out in zip(ps, outs):
        assert list(out.output_token_ids) == hf_generate(model, p, 4), f"{family}: prompt of {len(p)}"


@requires_cuda
def test_cuda_graphs_and_triton_match_hf(checkpoint):
    """On the GPU: Triton kernels, captured decode graphs, async scheduling, float32 (the
    kernels' ieee dots), prompts up to 100 tokens (12 windows), against HF on the CPU."""
    family, folder, model = checkpoint
    ps = prompts(5, (100, 19, 57, 3))
    eng = engine(folder, device="cuda", attention_kernels="triton", cuda_graphs="full",
                 max_num_batched_tokens=32, max_num_seqs=4, block_size=16, num_kv_blocks=64)
    assert eng.runner.decode_graphs is not None and eng.runner.decode_graphs.captured
    outs = eng.generate(ps, GREEDY)
    for p, out in zip(ps, outs):
        assert list(out.output_token_ids) == hf_generate(model, p), f"{family}: prompt of {len(p)}"
