"""The roofline floors count what a decoder step reads and computes, checked two ways:
against the published shapes by hand, and against torch's own FLOP counter on a real forward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aisp.model.attention_backend import VarlenCausalAttention
from aisp.model.llama import LlamaForCausalLM
from aisp.model.presets import PRESETS, build_synthetic
from aisp.workloads.decoder_cost import DecoderCost, causal_pairs


def _meta_model(name: str) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(PRESETS[name], dtype=torch.bfloat16)


def _layer_params(c) -> int:
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    linears = c.hidden_size * (q + 2 * kv) + q * c.hidden_size \
        + 3 * c.hidden_size * c.intermediate_size
    return linears, 2 * c.hidden_size


def test_8b_decode_step_reads_every_weight_but_the_unread_embedding_rows():
    c = PRESETS["llama-3-8b"]
    cost = DecoderCost.of(_meta_model("llama-3-8b"), kv_bytes_per_token=0)
    linears, norms = _layer_params(c)
    layers = c.num_hidden_layers * (linears + norms) + c.hidden_size        # + final norm
    head = c.vocab_size * c.hidden_size
    assert cost.step_bytes(num_tokens=1, kv_tokens_read=0) == 2 * (layers + head + c.hidden_size)
    # 15.01 GB of the 16.06 GB of parameters: the 1.05 GB embedding table is not read.
    assert cost.step_bytes(1, 0) / 1e9 == pytest.approx(15.01, abs=0.01)
    assert cost.layer_linear_params == c.num_hidden_layers * linears
    assert cost.lm_head_params == head


def test_tied_head_reads_the_whole_table_once():
    c = PRESETS["llama-3.2-1b"]
    model = _meta_model("llama-3.2-1b")
    cost = DecoderCost.of(model, kv_bytes_per_token=100)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert cost.head_is_embedding
    assert cost.step_bytes(num_tokens=8, kv_tokens_read=10) == total + 10 * 100
    assert cost.lm_head_params == c.vocab_size * c.hidden_size


class _MatmulAttention:
    """Causal attention of one packed sequence as two explicit matmuls over the full square,
    so torch's FLOP counter sees every (query, key) product it computes."""

    def forward(self, layer_idx, q, k, v, sliding_window=None):
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))
        s = q.transpose(0, 1) @ k.transpose(1, 2) * q.shape[-1] ** -0.5
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        return (s.softmax(-1) @ v).transpose(0, 1)


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_flops_equal_torchs_count_of_a_real_forward(preset):
    model, c = build_synthetic(preset, dtype=torch.float32, seed=0)
    cost = DecoderCost.of(model, kv_bytes_per_token=0)
    n = 6
    ids, pos = torch.randint(0, c.vocab_size, (n,)), torch.arange(n)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hidden = model(ids, pos, VarlenCausalAttention.from_seq_lens([n]))
        model.compute_logits(hidden[[n - 1]])
    assert counter.get_total_flops() == cost.flops(num_tokens=n, num_logits=1, attended_pairs=0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids, pos, _MatmulAttention())
    # The explicit matmuls compute the whole n x n square; a causal kernel needs only the pairs.
    assert counter.get_total_flops() == cost.flops(num_tokens=n, num_logits=0,
                                                   attended_pairs=n * n)


def test_causal_pairs_by_enumeration():
    for cached in (0, 3, 17):
        for new in (1, 2, 9):
            brute = sum(1 for i in range(new) for j in range(cached + new) if j <= cached + i)
            assert causal_pairs(cached, new) == brute


def test_offline_roofline_uses_what_a_step_reads():
    import dataclasses
    from types import SimpleNamespace

    from aisp.workloads.offline_throughput import roofline

    model = _meta_model("llama-3-8b")
    c = PRESETS["llama-3-8b"]
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2
    cost = DecoderCost.of(model, kv_bytes_per_token=kv)
    eng = {"summary": {"wall_s": 3.57, "num_steps": 261}, "batch1_tpot_ms": 4.59,
           "cost": dataclasses.asdict(cost)}
    ceil = SimpleNamespace(copy_bytes_per_s=4.064e12, matmul_flops_per_s=7.75e14)
    roof = roofline(eng, input_len=128, output_len=256, num_prompts=256, ceil=ceil)
    # 15.01 GB of weights + 256 tokens of KV history at 128 KiB: 3.70 ms, 80% at 4.59 ms
    # (the whole-parameter count gave 3.95 ms and 86%).
    assert roof["batch1_floor_ms"] == pytest.approx(3.70, abs=0.01)
    assert roof["batch1_fraction"] == pytest.approx(0.806, abs=0.002)
    # The compute floor: the layers' matmuls for every token, the head for sampled ones only.
    tokens = 256 * (128 + 255)
    linear = 2 * cost.layer_linear_params * tokens + 2 * cost.lm_head_params * 256 * 256
    assert linear < roof["flops"] < linear * 1.1
