"""Synthetic presets: build in place, sane logits, and an HF folder that transformers loads too."""

from __future__ import annotations

import pytest
import torch

from aisp.model import VarlenCausalAttention, build_synthetic, load_model, resolve_model, save_synthetic
from aisp.model.tokenizer import byte_tokenizer


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_build_synthetic_gives_finite_varied_logits(preset: str) -> None:
    model, config = build_synthetic(preset, "cpu", torch.float32, seed=0)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    ids = torch.randint(0, config.vocab_size, (12,))
    with torch.no_grad():
        logits = model.compute_logits(model(ids, torch.arange(12), VarlenCausalAttention([0, 12])))
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1, "degenerate init: logits nearly constant"
    assert len(set(logits.argmax(-1).tolist())) > 1


def test_build_synthetic_is_seeded_and_respects_dtype() -> None:
    a, _ = build_synthetic("tiny", "cpu", torch.bfloat16, seed=5)
    b, _ = build_synthetic("tiny", "cpu", torch.bfloat16, seed=5)
    c, _ = build_synthetic("tiny", "cpu", torch.bfloat16, seed=6)
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_save_synthetic_round_trip_ours_and_hf(preset: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = save_synthetic(preset, tmp_path, seed=3)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (folder / name).is_file(), name
    built, _ = build_synthetic(preset, "cpu", torch.float32, seed=3)
    ours, config = load_model(folder, "cpu", torch.float32)
    for (name, p), (_, q) in zip(built.named_parameters(), ours.named_parameters()):
        assert torch.equal(p, q), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text_ids = byte_tokenizer().encode("synthetic ünïcode")
    ids = torch.tensor(text_ids)
    with torch.no_grad():
        want = hf(ids[None]).logits[0]
        got = ours.compute_logits(ours(ids, torch.arange(len(ids)), VarlenCausalAttention([0, len(ids)])))
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tok("synthetic ünïcode").input_ids == text_ids
    assert hf_tok.eos_token_id == config.eos_token_ids[0]


def test_resolve_model_preset_and_folder(tmp_path) -> None:
    preset = resolve_model("tiny")
    assert preset.preset == "tiny" and preset.path is None
    assert preset.tokenizer().vocab_size <= preset.config.vocab_size
    folder = save_synthetic("tiny", tmp_path, seed=0)
    source = resolve_model(str(folder))
    assert source.path == folder and source.config == preset.config
    model, _ = source.load("cpu", torch.float32)
    built, _ = preset.load("cpu", torch.float32, seed=0)
    assert torch.equal(model.lm_head_weight, built.lm_head_weight)
    assert source.tokenizer().eos_token_ids == preset.tokenizer().eos_token_ids
