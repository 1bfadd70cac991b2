"""Piecewise CUDA graphs: bucket sizes, padding that cannot reach a real row, the mode switch,
and (on a GPU) captured pieces against eager bf16 through the whole engine."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.piecewise_graphs import PiecewiseGraphs, capture_sizes
from aisp.engine.sampling_params import SamplingParams
from aisp.model.attention_backend import VarlenCausalAttention
from aisp.model.presets import build_synthetic

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_capture_sizes_follow_vllms_list():
    assert capture_sizes(1) == [1]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    sizes = capture_sizes(300)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-4:] == [256, 272, 288, 300]
    assert all(b - a == 8 for a, b in zip(sizes[3:34], sizes[4:34]))
    assert len(capture_sizes(2048)) == 3 + 31 + (2048 - 256) // 16 + 1
    with pytest.raises(ValueError, match="at least 1 token"):
        capture_sizes(0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_padding_rows_cannot_reach_real_rows(preset):
    """NaN in every padding row of every buffer a piece reads: the real rows still equal the
    eager model's, because each piece is row-wise and attention sees only the real rows."""
    model, config = build_synthetic(preset, dtype=torch.float32, seed=3)
    pieces = PiecewiseGraphs(model, max_tokens=64, device=torch.device("cpu"), capture=False)
    seq_lens = [6, 3, 8]                        # 17 tokens: the 24-token bucket, 7 padding rows
    n = sum(seq_lens)
    ids = torch.randint(0, config.vocab_size, (n,), generator=torch.Generator().manual_seed(1))
    pos = torch.cat([torch.arange(k) for k in seq_lens])
    attn = VarlenCausalAttention.from_seq_lens(seq_lens)
    with torch.inference_mode():
        for buf in (pieces.residual, pieces.attn_out, pieces.q, pieces.k, pieces.v, pieces.hidden):
            buf.fill_(float("nan"))
        got = pieces.run(ids, pos, lambda i, q, k, v: attn.forward(i, q, k, v))
        want = model(ids, pos, attn)
    assert pieces.bucket_for(n) == 24
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_graph_modes_are_checked_where_they_cannot_run():
    with pytest.raises(ValueError, match="cuda_graphs 'partial' unknown; choose auto or one of "
                                         "none, full, piecewise, full_and_piecewise"):
        EngineConfig(cuda_graphs="partial")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs='piecewise' captures CUDA graphs, but "
                                             "this engine runs on cpu"):
            LLMEngine(EngineConfig(model="tiny", device="cpu", cuda_graphs="piecewise"))
    eng = LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=32))
    assert eng.graph_mode.name == "none" and "every step eager" in eng.graph_summary()


def _workload():
    g = torch.Generator().manual_seed(5)
    lengths = (5, 40, 17, 90, 3, 64, 23, 130)
    return [torch.randint(3, 250, (n,), generator=g).tolist() for n in lengths]


@requires_cuda
@pytest.mark.parametrize("mode", ["piecewise", "full_and_piecewise"])
def test_captured_pieces_match_uncaptured_in_float32(mode):
    """Graph replay changes no arithmetic: float32 tokens equal the same pieces run eagerly,
    with chunked prefill (budget 48), mixed steps and a preemption (tight KV)."""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    cfg = dict(model="tiny", dtype="float32", max_num_seqs=6, max_num_batched_tokens=48,
               block_size=16, num_kv_blocks=28, cuda_graphs=mode)
    want = LLMEngine(EngineConfig(graph_capture="off", **cfg)).generate(_workload(), params)
    eng = LLMEngine(EngineConfig(**cfg))
    assert eng.runner.piecewise_graphs.captured
    paths = Counter()
    eng.step_listeners.append(lambda s: paths.update([s.graph_path]))
    got = eng.generate(_workload(), params)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in want]
    assert paths["piecewise"] > 0 and paths["eager"] == 0, paths
    info = eng.runner.piecewise_graphs.info
    assert info.num_graphs == len(capture_sizes(48)) * (eng.model_config.num_hidden_layers + 1)


@requires_cuda
@pytest.mark.parametrize("mode", ["piecewise", "full_and_piecewise"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_piecewise_greedy_tokens_equal_eager_bf16(mode, preset):
    """bf16 greedy tokens under a graph mode against eager bf16, mixed lengths, chunked prefill
    and preemption. Tolerance: bf16 graphs and eager launch the same kernels, so tokens should
    be equal; a near-tie flipped by a different cuBLAS algorithm (padded M) is allowed in at
    most one request, and then only after its first 8 tokens."""
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    cfg = dict(model=preset, dtype="bfloat16", max_num_seqs=6, max_num_batched_tokens=48,
               block_size=16, num_kv_blocks=30)
    ref = LLMEngine(EngineConfig(cuda_graphs="none", **cfg)).generate(_workload(), params)
    got = LLMEngine(EngineConfig(cuda_graphs=mode, **cfg)).generate(_workload(), params)
    differ = [(r.output_token_ids, g.output_token_ids) for r, g in zip(ref, got)
              if r.output_token_ids != g.output_token_ids]
    assert len(differ) <= 1, differ
    for r, g in differ:
        assert r[:8] == g[:8], (r, g)
