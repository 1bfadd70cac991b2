"""`--compile regional|full` through the engine: HF's greedy tokens, no steady-state recompile,
one compiled region for all layers, attention an opaque op read from a forward context.

Compiles are slow on two cores, so the compiling tests are few and share one tiny HF
checkpoint (Inductor's on-disk FX graph cache then serves the repeats)."""

from __future__ import annotations

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.model.attention_backend import VarlenCausalAttention
from aisp.model.attention_op import attention_context
from aisp.model.compile import (CompileWatch, apply_compile, compiled_graphs, compiled_graphs_of,
                                recompiles)
from aisp.model.presets import PRESETS, build_synthetic
from tests.engine.test_engine_hf import GREEDY, _prompts, hf_greedy
from tests.model.conftest import build_hf_model
from tests.compile_support import needs_compiler

pytestmark = needs_compiler


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test builds its own engine, but Dynamo keys its cache by code object, so the
    compiled entries of every earlier test's model (dtype, device, architecture) pile up on
    `pre_attention` until the recompile limit (8) makes Dynamo fall back to eager. One engine
    per process never gets near it; a test process does."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    model = build_hf_model("llama")
    folder = tmp_path_factory.mktemp("compile-llama")
    model.save_pretrained(folder)
    return folder, model


def test_an_unknown_compile_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="compile mode 'max' unknown; choose one of none, "
                                         "regional, full"):
        EngineConfig(compile="max")


def test_the_attention_op_needs_a_context_and_matches_its_fake():
    q, k, v = torch.randn(5, 4, 16), torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    with pytest.raises(RuntimeError, match="outside an attention context"):
        torch.ops.aisp.attention(q, k, v, 0, None)
    backend = VarlenCausalAttention([0, 2, 5])
    with attention_context(backend):
        out = torch.ops.aisp.attention(q, k, v, 0, None)
        # Real vs fake (shapes, strides, dtype) and the schema's claims, checked by torch.
        torch.library.opcheck(torch.ops.aisp.attention.default, (q, k, v, 0, None),
                              test_utils=("test_schema", "test_faketensor"))
    assert torch.equal(out, backend.forward(0, q, k, v))
    assert out.is_contiguous()


def test_regional_compiles_the_same_graphs_for_2_and_4_layers():
    """Dynamo caches by code object and inlined modules make parameters inputs: every layer
    shares one graph per half, so the count is a property of the halves, not of the depth."""
    counts, outs = {}, {}
    for layers in (2, 4):
        torch._dynamo.reset()   # count from nothing for each depth
        model, cfg = build_synthetic(PRESETS["tiny"].replace(num_hidden_layers=layers), "cpu",
                                     torch.float32)
        ids, pos = torch.randint(3, 500, (6,)), torch.arange(6)
        attn = VarlenCausalAttention([0, 6])
        with torch.inference_mode():
            eager = model(ids, pos, attn)
            info = apply_compile(model, "regional")
            with CompileWatch(model, info):
                outs[layers] = model(ids, pos, attn)
        counts[layers] = compiled_graphs_of(model)
        torch.testing.assert_close(outs[layers], eager, rtol=1e-5, atol=1e-5)
    # pre: the first layer (no residual yet) and the others; post: one.
    assert counts[2] == counts[4] == {"LlamaDecoderLayer.pre_attention": 2,
                                      "LlamaDecoderLayer.post_attention": 1}


@pytest.mark.parametrize("mode,graphs", [("regional", 6), ("full", 2)])
def test_compiled_engine_matches_hf_and_never_recompiles(llama_checkpoint, mode, graphs):
    folder, hf = llama_checkpoint
    torch._dynamo.reset()   # graphs are counted process-wide: start from none
    eng = LLMEngine(EngineConfig(model=str(folder), device="cpu", dtype="float32", compile=mode,
                                 max_num_batched_tokens=8, block_size=4))
    info = eng.compile_info
    assert info.mode == mode and info.compile_s is not None and info.compile_s > 0
    assert info.cache in ("cold", "warm", "partial", "in-memory")
    assert f"compile {mode}: " in info.summary()
    # Warm-up at 1 and 2 tokens compiled everything (see aisp.engine.compile_warmup).
    assert info.graphs_compiled == info.graphs == compiled_graphs(eng.model) == graphs

    sizes: list[tuple[int, int]] = []
    eng.step_listeners.append(lambda s: sizes.append((s.scheduler.num_decode_tokens,
                                                      s.scheduler.num_prefill_tokens)))
    prompts = _prompts(1, lengths=(23, 6, 14, 3))
    with torch.compiler.set_stance("fail_on_recompile"):   # a recompile raises here
        outs = eng.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert list(out.output_token_ids) == hf_greedy(hf, prompt)
    assert recompiles(eng.model, info) == 0
    # The steps really varied: decode-only steps of several sizes, prefill-only, mixed.
    assert {d + p for d, p in sizes} >= {1, 2, 3, 4, 8}
    assert any(d and p for d, p in sizes) and any(d and not p for d, p in sizes)

    # The detector is live: a forward the graphs were not compiled for (grad mode on, outside
    # the runner's inference mode) is refused instead of compiled.
    ids = torch.zeros(3, dtype=torch.int64)
    with torch.compiler.set_stance("fail_on_recompile"), torch.enable_grad():
        with pytest.raises(Exception, match="(?i)recompil"):
            eng.model(ids, ids, VarlenCausalAttention([0, 3]))


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Chunked prefill (8-token budget: mixed steps) and forced preemption (12 blocks of 4 tokens,
# as in test_engine_hf), with the engine's default graph mode (full graphs for compile='full')
# and async scheduling on a GPU.
GPU_CFG = dict(max_num_batched_tokens=8, block_size=4, num_kv_blocks=12, max_model_len=40)


def _gpu_run(model: str, dtype: str, mode: str):
    torch.manual_seed(0)
    prompts = _prompts(2, lengths=(20, 18, 22, 19, 5, 11), vocab=250)
    # Whole-model compile composes with whole-step graphs only (piecewise graphs run the halves).
    graphs = "full" if mode == "full" else "auto"
    eng = LLMEngine(EngineConfig(model=model, dtype=dtype, compile=mode, cuda_graphs=graphs,
                                 **GPU_CFG))
    preempted = []
    eng.step_listeners.append(lambda s: preempted.append(s.scheduler.num_preemptions))
    with torch.compiler.set_stance("fail_on_recompile"):
        outs = eng.generate(prompts, GREEDY)
    if mode != "none":
        assert recompiles(eng.model, eng.compile_info) == 0
    assert sum(preempted) > 0
    return [list(o.output_token_ids) for o in outs]


@GPU
@pytest.mark.parametrize("mode", ["regional", "full"])
@pytest.mark.parametrize("model", ["tiny", "tiny-qwen3"])
def test_compiled_engine_gives_eager_tokens_on_gpu_float32(model, mode):
    assert _gpu_run(model, "float32", mode) == _gpu_run(model, "float32", "none")


@GPU
def test_regional_engine_agrees_with_eager_bf16_on_gpu():
    """bf16: compiled code rounds elsewhere (fused float32 intermediates), which can flip a
    near-tie of a random-weight model's argmax and change the rest of that request. Stated
    tolerance: at least 5 of the 6 requests identical, and every request identical for its
    first 4 tokens."""
    got, want = _gpu_run("tiny", "bfloat16", "regional"), _gpu_run("tiny", "bfloat16", "none")
    assert sum(g == w for g, w in zip(got, want)) >= 5, (got, want)
    assert all(g[:4] == w[:4] for g, w in zip(got, want)), (got, want)


def test_whole_model_compile_with_piecewise_graphs_is_refused():
    """Piecewise graphs run the layers' halves, never the compiled whole forward: the pair of
    switches would silently leave mixed steps uncompiled, so it is an error that says why."""
    with pytest.raises(ValueError, match="compile='full' compiles the whole forward, which "
                                         "piecewise graphs never call"):
        LLMEngine(EngineConfig(model="tiny", device="cpu", compile="full",
                               cuda_graphs="piecewise", graph_capture="off"))


def test_regional_halves_inside_piecewise_pieces_match_hf(llama_checkpoint):
    """The composition the issue names as the fast path: compiled halves called by the
    piecewise pieces (run eagerly here: graph_capture off), with mixed steps, against HF."""
    folder, hf = llama_checkpoint
    eng = LLMEngine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                                 compile="regional", cuda_graphs="piecewise",
                                 graph_capture="off", max_num_batched_tokens=8, block_size=4))
    paths = []
    eng.step_listeners.append(lambda s: paths.append(s.graph_path))
    prompts = _prompts(3, lengths=(13, 5, 9))
    with torch.compiler.set_stance("fail_on_recompile"):
        outs = eng.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert list(out.output_token_ids) == hf_greedy(hf, prompt)
    assert set(paths) == {"piecewise"}, paths
    assert recompiles(eng.model, eng.compile_info) == 0


def test_whole_model_compile_inside_full_decode_graph_buffers_never_recompiles(llama_checkpoint):
    """compile='full' with the full decode-graph path (its padded buffers run eagerly here):
    the buffers are inference tensors like every other step input, so no guard fails."""
    folder, hf = llama_checkpoint
    eng = LLMEngine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                                 compile="full", cuda_graphs="full", graph_capture="off",
                                 max_num_batched_tokens=8, block_size=4))
    prompts = _prompts(4, lengths=(7, 3))
    with torch.compiler.set_stance("fail_on_recompile"):
        outs = eng.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert list(out.output_token_ids) == hf_greedy(hf, prompt)
