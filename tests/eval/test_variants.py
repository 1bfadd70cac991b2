"""The variants registry: one set of weights per preset across dtypes; unknown names listed."""

import pytest
import torch

from aisp.eval.variants import VARIANTS, Variant, get_variant, register_variant
from aisp.model.presets import resolve_model, save_synthetic


def test_dtype_variants_of_a_preset_share_the_weights():
    source = resolve_model("tiny")
    f32 = get_variant("float32").load(source, torch.device("cpu"), 7)
    bf16 = get_variant("bfloat16").load(source, torch.device("cpu"), 7)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.embed_tokens.weight, f32.embed_tokens.weight.bfloat16(),
                               rtol=0, atol=0)
    assert bf16.rotary_emb.cos_sin_cache.dtype == torch.float32


def test_a_folder_loads_straight_into_the_dtype(tmp_path):
    save_synthetic("tiny", tmp_path / "m", seed=1)
    model = get_variant("float16").load(resolve_model(str(tmp_path / "m")), torch.device("cpu"), 0)
    assert model.lm_head.weight.dtype == torch.float16


def test_unknown_and_duplicate_variants():
    with pytest.raises(ValueError, match="variants: float32, bfloat16, float16"):
        get_variant("fp8-per-tensor")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(Variant("float32", "again", VARIANTS["float32"].load))
