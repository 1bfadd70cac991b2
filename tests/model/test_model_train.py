"""`aisp model train`: the corpus split, the training forward, and a trained micro checkpoint that
the engine and transformers both load (CPU, a few seconds of training)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from aisp.model import VarlenCausalAttention
from aisp.model.corpus import pydoc_text, split_point, stdlib_corpus, stdlib_sources
from aisp.model.tokenizer import BYTE_VOCAB_SIZE
from aisp.model.train import (OUTPUT_FILES, TRAIN_PRESETS, TrainConfig, WindowAttention, lr_at,
                              train, train_preset, window_loss)

UNIFORM_PPL = BYTE_VOCAB_SIZE  # a model that knows nothing spreads its mass over all 259 ids


def test_corpus_split_is_deterministic_disjoint_and_complete() -> None:
    train_bytes, eval_bytes = stdlib_corpus("train"), stdlib_corpus("eval")
    whole = pydoc_text()
    assert train_bytes + eval_bytes == whole  # disjoint and complete: one cut, nothing dropped
    assert (train_bytes, eval_bytes) == (stdlib_corpus("train"), stdlib_corpus("eval"))
    assert abs(len(eval_bytes) - len(whole) / 10) < 8  # the last 10 % (cut moved to a char start)
    train_bytes.decode("utf-8"), eval_bytes.decode("utf-8")
    assert split_point(b"a" * 20) == 18
    assert split_point(b"a" * 17 + "é".encode() + b"b") == 19  # 18 is inside "é"
    with pytest.raises(ValueError, match="choose one of train, eval"):
        stdlib_corpus("test")


def test_stdlib_sources_leave_out_the_eval_text() -> None:
    sources = stdlib_sources()
    assert len(sources) > 1_000_000
    eval_bytes = stdlib_corpus("eval")
    # pydoc_data/topics.py holds the topics verbatim; any 200 eval bytes inside the sources
    # would mean the eval split leaked into the train text.
    for start in range(0, len(eval_bytes) - 200, len(eval_bytes) // 8):
        assert eval_bytes[start:start + 200] not in sources


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2)])
def test_window_attention_equals_varlen(num_heads: int, num_kv_heads: int) -> None:
    b, n, d = 3, 7, 8
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b * n, num_heads, d, generator=gen)
    k, v = (torch.randn(b * n, num_kv_heads, d, generator=gen) for _ in range(2))
    want = VarlenCausalAttention.from_seq_lens([n] * b).forward(0, q, k, v)
    got = WindowAttention(b, n).forward(0, q, k, v)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)  # float32: two SDPA call shapes


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    c = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(99, c) > 0.1
    assert lr_at(100, c) == pytest.approx(0.1)
    lrs = [lr_at(s, c) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_configs_are_validated_and_presets_have_the_stated_sizes() -> None:
    assert TRAIN_PRESETS["micro"].model_config().num_params() == 131_776
    assert TRAIN_PRESETS["small"].model_config().num_params() == 25_439_744
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        TrainConfig(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        TrainConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown training preset 'big'; presets: micro, small"):
        train_preset("big")
    assert train_preset("micro", steps=5).warmup_steps == 0  # short runs shorten the warm-up


def train_one_thread(config: TrainConfig, out):
    """`train` with one intra-op thread: ops this small gain nothing from two, and on a shared
    CPU (parallel test runs) OpenMP's spinning threads made steps 5-50x slower (measured: 0.04 s
    vs 0.2-2 s per micro step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config, out, overwrite=True, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The micro model after 30 steps (16 windows of 64 bytes each): ~2 s on a 2-core CPU."""
    config = train_preset("micro", steps=30, eval_every=30)
    return config, train_one_thread(config, tmp_path_factory.mktemp("micro"))


def test_held_out_perplexity_is_far_below_uniform(trained) -> None:
    config, result = trained
    log = json.loads((result.out_dir / "train_log.json").read_text())
    first, last = log["evals"][0], log["evals"][-1]
    # Before training the N(0, 0.02) model is near uniform; after it, far below. The bound is
    # 0.5 x uniform: even learning only which bytes are frequent (English prose and code use
    # few of the 256) brings byte perplexity near 30, so a run that learned anything passes with
    # a wide margin, while one whose gradients never reached the weights stays near 259.
    assert abs(first["ppl"] / UNIFORM_PPL - 1) < 0.1, first
    assert last["step"] == config.steps and last["loss"] == result.eval_loss
    assert result.eval_ppl < 0.5 * UNIFORM_PPL, result
    assert math.isfinite(result.tokens_per_s) and result.tokens_per_s > 0
    assert len(log["history"]["train_loss"]) == config.steps
    assert log["command"] == (f"python -m cli.aisp model train {result.out_dir} --preset micro "
                              f"--steps 30 --warmup-steps 3 --eval-every 30")
    assert log["corpus"]["eval"]["num_bytes"] == len(stdlib_corpus("eval"))
    for name in OUTPUT_FILES:
        assert (result.out_dir / name).is_file(), name
    assert (result.out_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_generates_in_the_engine_and_matches_transformers(trained) -> None:
    transformers = pytest.importorskip("transformers")
    from aisp.engine.config import EngineConfig
    from aisp.engine.engine import LLMEngine
    from aisp.engine.sampling_params import SamplingParams

    _, result = trained
    engine = LLMEngine(EngineConfig(model=str(result.out_dir), device="cpu", dtype="float32"))
    [out] = engine.generate(["The "], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert len(out.output_token_ids) == 12 and isinstance(out.text, str)

    hf = transformers.LlamaForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32).eval()
    ids = torch.tensor(list(stdlib_corpus("eval")[:64]))
    with torch.no_grad():
        ours = engine.model.compute_logits(
            engine.model(ids, torch.arange(len(ids)), VarlenCausalAttention([0, len(ids)])))
        want = hf(ids[None]).logits[0].float()
        # The training objective is transformers' causal-LM loss (labels shifted inside HF).
        hf_loss = hf(ids[None], labels=ids[None]).loss.item()
        our_loss = window_loss(engine.model, ids[None]).item()
    scale = want.abs().max().item()
    err = (ours - want).abs().max().item()
    assert err < 1e-4 * scale, f"max abs diff {err:.2e} vs logit scale {scale:.2f}"  # float32
    assert our_loss == pytest.approx(hf_loss, rel=1e-5)


def test_bfloat16_trains_a_bf16_model_and_saves_the_float32_masters(tmp_path) -> None:
    # The H200 path (dtype auto on CUDA), run on the CPU: bf16 forward/backward, float32 AdamW.
    from safetensors.torch import load_file

    result = train_one_thread(train_preset("micro", steps=4, dtype="bfloat16"), tmp_path)
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["compute_dtype"] == "bfloat16 (float32 master weights)"
    assert result.eval_loss < log["evals"][0]["loss"] - 0.1
    weights = load_file(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    w = weights["model.layers.0.mlp.down_proj.weight"]
    assert not torch.equal(w, w.bfloat16().float())  # the masters, not their bf16 copies


def test_cli_refuses_a_non_empty_out_dir_and_bad_sizes(tmp_path) -> None:
    from aisp.cli import app

    (tmp_path / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(app, ["model", "train", str(tmp_path), "--steps", "1"])
    assert r.exit_code == 2 and "pass --overwrite" in r.output, r.output
    r = CliRunner().invoke(app, ["model", "train", str(tmp_path / "new"), "--num-heads", "3"])
    assert r.exit_code == 2 and "not a multiple of num_heads 3" in r.output, r.output
    r = CliRunner().invoke(app, ["model", "train", str(tmp_path / "new"), "--corpus", "wiki"])
    assert r.exit_code == 2 and "pydoc+sources" in r.output, r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, ["model", "train", str(tmp_path / "new"), "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available" in r.output, r.output
    assert not (tmp_path / "new").exists()  # refused before anything was written
