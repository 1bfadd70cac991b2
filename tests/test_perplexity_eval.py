"""ch16/perplexity_eval.py: dtype variants of the tiny preset on the CPU, and its errors."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "ch16" / "perplexity_eval.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("perplexity_eval", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_float32_bfloat16(script, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = script.main(["--compare", "float32", "bfloat16", "--num-tokens", "300",
                      "--max-length", "128", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bfloat16" in printed and "KL mean" in printed
    ref, bf16 = json.loads(out.read_text())["rows"]
    assert ref["variant"] == "float32" and bf16["variant"] == "bfloat16"
    assert ref["num_scored_tokens"] == bf16["num_scored_tokens"] == 300
    # bf16 rounding moves the logits a little, not a lot
    assert 0 < bf16["kl_mean"] < 1e-3 and bf16["top1_agreement"] > 0.9
    assert abs(bf16["delta_ppl"]) < 1e-2


def test_strided_method_and_a_single_variant(script, capsys):
    rc = script.main(["--compare", "float32", "--num-tokens", "100", "--max-length", "64",
                      "--method", "hf-strided", "--stride", "16"])
    assert rc == 0 and "stride 16" in capsys.readouterr().out


def test_unknown_variant_lists_the_valid_ones(script, capsys):
    assert script.main(["--compare", "float32", "fp8-per-channel"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "unknown variant 'fp8-per-channel'; variants: float32, bfloat16, float16" in out
