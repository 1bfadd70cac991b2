"""The regional_compilation workload's pieces: a real engine step and its float64 reference,
the step captured as a CUDA graph, and cold/warm starts measured in child processes with their
cache state."""

import pytest
import torch

from aisp.harness.verify import compare
from aisp.model.compile import CompileWatch, apply_compile, recompiles
from aisp.model.presets import build_synthetic
from aisp.workloads.compile_start import StartSpec, cold_and_warm_start
from aisp.workloads.model_step import StepGraph, StepShape, build_step, reference_logits
from tests.compile_support import needs_compiler

pytestmark = needs_compiler

SHAPES = [StepShape(4, 24), StepShape(3, 17, num_prefills=2, prefill_len=6, block_size=4),
          StepShape(0, 0, num_prefills=1, prefill_len=9)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.label)
def test_step_logits_match_float64_and_repeat_exactly(shape):
    model, config = build_synthetic("tiny", "cpu", torch.float32)
    step = build_step(shape, config, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        first, again = step.logits(model, "torch"), step.logits(model, "torch")
    assert first.shape == (shape.num_seqs, config.vocab_size)
    assert torch.equal(first, again)   # the step rewrites its own slots with the same values
    assert compare(first, reference_logits(model, step), 1e-5, "float64").ok


def test_the_reference_sees_a_wrong_kv_history():
    """Negative control: attend over another sequence's blocks and the reference disagrees."""
    model, config = build_synthetic("tiny", "cpu", torch.float32)
    step = build_step(StepShape(4, 24), config, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        ref = reference_logits(model, step)
        step.metadata.decode_block_tables.copy_(step.metadata.decode_block_tables.roll(1, 0))
        wrong = step.logits(model, "torch")
    assert not compare(wrong, ref, 1e-2, "float64").ok


def test_a_step_graph_refuses_what_it_cannot_capture():
    model, config = build_synthetic("tiny", "cpu", torch.float32)
    step = build_step(StepShape(2, 5), config, torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        StepGraph(step, model, "triton")
    if torch.cuda.is_available():
        model, config = build_synthetic("tiny", "cuda", torch.float32)
        step = build_step(StepShape(2, 5), config, torch.device("cuda"), torch.float32)
        with pytest.raises(ValueError, match="cannot be captured"):
            StepGraph(step, model, "torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["none", "regional", "full"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.label)
def test_a_replayed_step_graph_matches_the_launched_step(shape, mode):
    """What the pair times on a GPU: the compiled step captured once, replayed; the replay
    computes what the Python-launched step computes, and nothing recompiles at capture."""
    torch._dynamo.reset()
    device = torch.device("cuda")
    with torch.inference_mode():
        model, config = build_synthetic("tiny", device, torch.float32)
        step = build_step(shape, config, device, torch.float32)
        info = apply_compile(model, mode)
        watch = CompileWatch(model, info)
        with watch:
            launched = step.logits(model, "triton")
        info = watch.result()
    graph = StepGraph(step, model, "triton")
    replayed = graph.replay().clone()
    assert replayed.data_ptr() != graph.logits.data_ptr()
    torch.testing.assert_close(replayed, launched, rtol=1e-5, atol=1e-5)
    assert compare(replayed, reference_logits(model, step), 1e-4, "float64").ok
    assert graph.replay().data_ptr() == graph.logits.data_ptr()   # the graph's own buffer
    if info.compiled:
        assert recompiles(model, info) == 0


def test_cold_then_warm_start_report_their_cache_state():
    # full: one graph, the cheapest compile (a cold C++ compile on two cores takes ~25 s)
    spec = StartSpec(model="tiny", mode="full", shapes=((2, 5, 0, 0),), time_iterations=2)
    r = cold_and_warm_start(spec)
    cold, warm = r["cold"], r["warm"]
    assert cold["cache_dir_was_empty"] and not cold["cache_warm"]
    assert cold["cache"] == "cold" and cold["cache_misses"] > 0 and cold["cache_hits"] == 0
    assert not warm["cache_dir_was_empty"] and warm["cache_warm"]
    assert warm["cache"] == "warm" and warm["cache_hits"] == cold["cache_misses"]
    assert "steps" not in cold and warm["recompiles"] == 0
    assert warm["steps"]["decode_d2x5"]["median_ms"] > 0
    for rep in (cold, warm):
        assert rep["graphs"] == 1
        assert rep["start_to_first_output_s"] >= rep["first_forwards_s"] > 0
        assert rep["process_wall_s"] >= rep["start_to_first_output_s"]
