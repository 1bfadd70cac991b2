"""Our loader + model against transformers on checkpoints transformers itself wrote."""

from __future__ import annotations

import json

import pytest
import torch

from aisp.model import LlamaForCausalLM, VarlenCausalAttention, load_model
from tests.compile_support import needs_compiler

SEQ_LENS = [5, 17, 1, 9]  # packed back to back; 17 crosses the llama3 band edges (4 and 16)


def packed_logits(model: LlamaForCausalLM, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run all `seqs` as one flattened batch; split the logits back per sequence."""
    ids = torch.cat(seqs)
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    attn = VarlenCausalAttention.from_seq_lens([len(s) for s in seqs])
    with torch.no_grad():
        logits = model.compute_logits(model(ids, positions, attn))
    return list(logits.split([len(s) for s in seqs]))


def test_packed_logits_match_hf_per_sequence(hf_checkpoint) -> None:
    family, folder, hf = hf_checkpoint
    model, config = load_model(folder, "cpu", torch.float32)
    assert config.architecture == hf.config.architectures[0]
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in SEQ_LENS]
    ours = packed_logits(model, seqs)
    for seq, got in zip(seqs, ours):
        with torch.no_grad():
            want = hf(seq[None]).logits[0].float()
        scale = want.abs().max().item()
        assert scale > 0.5, "degenerate logits would make the comparison meaningless"
        err = (got - want).abs().max().item()
        assert err < 1e-4 * scale, f"{family}: max abs diff {err:.2e} vs logit scale {scale:.2f}"


def test_greedy_full_recompute_matches_hf_generate(hf_checkpoint) -> None:
    family, folder, hf = hf_checkpoint
    model, config = load_model(folder, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=gen) for n in (4, 7, 12)]
    max_new = 8
    # Ours: every step recomputes all live sequences in one packed batch (no KV cache).
    outs = [p.tolist() for p in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new):
        live = [i for i, d in enumerate(done) if not d]
        if not live:
            break
        logits = packed_logits(model, [torch.tensor(outs[i]) for i in live])
        for i, lg in zip(live, logits):
            tok = int(lg[-1].argmax())
            outs[i].append(tok)
            done[i] = tok in config.eos_token_ids
    for prompt, ours in zip(prompts, outs):
        with torch.no_grad():
            want = hf.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               do_sample=False, max_new_tokens=max_new, pad_token_id=0)[0].tolist()
        assert ours == want, f"{family}: greedy tokens diverge"


def test_sharded_checkpoint_loads_same_weights(tmp_path, make_hf_model) -> None:
    hf = make_hf_model("qwen3", seed=3)
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the test needs a checkpoint of several shards"
    a, _ = load_model(tmp_path / "single", "cpu", torch.float32)
    b, _ = load_model(tmp_path / "sharded", "cpu", torch.float32)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_load_casts_to_requested_dtype(hf_checkpoint) -> None:
    _, folder, _ = hf_checkpoint
    model, _ = load_model(folder, "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rotary_emb.cos_sin_cache.dtype == torch.float32  # rope stays float32


@pytest.mark.parametrize("family", ["qwen2"])
def test_tied_checkpoint_has_no_lm_head(family, tmp_path, make_hf_model) -> None:
    hf = make_hf_model(family)
    hf.save_pretrained(tmp_path)
    model, config = load_model(tmp_path, "cpu", torch.float32)
    assert config.tie_word_embeddings and model.lm_head is None
    assert torch.equal(model.lm_head_weight, hf.get_input_embeddings().weight)


@needs_compiler
@pytest.mark.parametrize("mode", ["regional", "full"])
def test_compiled_packed_logits_match_hf(make_hf_model, tmp_path, mode) -> None:
    """torch.compile changes no logit beyond float32 rounding (aisp.model.compile)."""
    from aisp.model.compile import apply_compile

    hf = make_hf_model("llama")
    hf.save_pretrained(tmp_path)
    model, config = load_model(tmp_path, "cpu", torch.float32)
    apply_compile(model, mode)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in SEQ_LENS]
    for seq, got in zip(seqs, packed_logits(model, seqs)):
        with torch.no_grad():
            want = hf(seq[None]).logits[0].float()
        scale = want.abs().max().item()
        err = (got - want).abs().max().item()
        assert err < 1e-4 * scale, f"{mode}: max abs diff {err:.2e} vs logit scale {scale:.2f}"
