import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.cuda_graphs import bucket_sizes
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_cuda_graphs_need_a_gpu_or_say_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda_graphs='full' captures CUDA graphs, but this "
                                         "engine runs on cpu"):
        LLMEngine(EngineConfig(model="tiny", device="cpu", cuda_graphs="full"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["tiny", "tiny-qwen3"])
def test_graph_replay_matches_eager_on_gpu(model):
    prompts = [[(7 * i + j) % 200 + 3 for j in range(n)] for i, n in enumerate((5, 31, 17, 64, 2))]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    cfg = dict(model=model, dtype="float32", max_num_seqs=8)
    eager = LLMEngine(EngineConfig(cuda_graphs="none", **cfg)).generate(prompts, params)
    graphed_engine = LLMEngine(EngineConfig(cuda_graphs="full", **cfg))
    assert graphed_engine.runner.decode_graphs.captured
    graphed = graphed_engine.generate(prompts, params)
    assert [o.output_token_ids for o in graphed] == [o.output_token_ids for o in eager]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["tiny", "tiny-qwen3"])
def test_async_scheduling_matches_sync_on_gpu(model):
    """The GPU path of async scheduling: pending inputs filled from the previous launch's ids
    on the device (graph replay and eager mixed steps), pinned non-blocking input copies, and
    stop tokens seen a step late."""
    prompts = [[(5 * i + j) % 200 + 3 for j in range(n)] for i, n in enumerate((9, 40, 3, 77, 21, 6))]
    cfg = dict(model=model, dtype="float32", max_num_seqs=4, max_num_batched_tokens=32)
    greedy = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    ref = LLMEngine(EngineConfig(async_scheduling="off", **cfg)).generate(prompts, greedy)
    params = [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True,
                             stop_token_ids=(o.output_token_ids[7],)) for o in ref]
    want = LLMEngine(EngineConfig(async_scheduling="off", **cfg)).generate(prompts, params)
    eng = LLMEngine(EngineConfig(async_scheduling="on", **cfg))
    assert eng.async_scheduling and eng.runner.decode_graphs.captured
    got = eng.generate(prompts, params)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in want]
    assert eng.block_manager.num_used_blocks == 0
