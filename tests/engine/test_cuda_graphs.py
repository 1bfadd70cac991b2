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
    with pytest.raises(ValueError, match="decode_graphs='cuda' needs a CUDA device"):
        LLMEngine(EngineConfig(model="tiny", device="cpu", decode_graphs="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["tiny", "tiny-qwen3"])
def test_graph_replay_matches_eager_on_gpu(model):
    prompts = [[(7 * i + j) % 200 + 3 for j in range(n)] for i, n in enumerate((5, 31, 17, 64, 2))]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    cfg = dict(model=model, dtype="float32", max_num_seqs=8)
    eager = LLMEngine(EngineConfig(decode_graphs="off", **cfg)).generate(prompts, params)
    graphed_engine = LLMEngine(EngineConfig(decode_graphs="cuda", **cfg))
    assert graphed_engine.runner.decode_graphs.captured
    graphed = graphed_engine.generate(prompts, params)
    assert [o.output_token_ids for o in graphed] == [o.output_token_ids for o in eager]
