import json

import pytest
import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.profiling import categorize
from aisp.harness.runner import RunOptions, run_pairs

from .toy_chapter import write_pair


@pytest.mark.parametrize("name,category", [
    ("void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "GEMM"),
    ("aten::bmm", "GEMM"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel", "norm"),
    ("Memcpy DtoD (Device -> Device)", "memcpy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add>", "elementwise"),
    ("aten::_softmax", "elementwise"),
    ("_decode_kernel", "attention"),
    ("_merge_splits_kernel", "attention"),
    ("_store_kv_kernel", "memcpy"),
    ("some_custom_thing", "other"),
])
def test_categories(name, category):
    assert categorize(name) == category


def test_minimal_and_full_profiles_on_cpu(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: (a * 1.0) @ x + 0.0",
               {"": "lambda a, x: torch.mm(a, x)"})
    [row] = run_pairs(resolve_targets("ch90", tmp_path), detect("cpu"), None,
                      RunOptions(profile="minimal"), root=tmp_path)
    prof = row.baseline.profile
    assert prof["iterations"] == 3
    assert "GEMM" in prof["by_category"] and "elementwise" in prof["by_category"]
    assert sum(v["fraction"] for v in prof["by_category"].values()) == pytest.approx(1.0)
    assert "chrome_trace" not in prof

    art = tmp_path / "art"
    [row] = run_pairs(resolve_targets("ch90", tmp_path), detect("cpu"), None,
                      RunOptions(profile="full", artifacts_dir=art), root=tmp_path)
    trace = json.loads(open(row.optimized.profile["chrome_trace"]).read())
    assert any("mm" in e.get("name", "") for e in trace["traceEvents"])
    assert row.optimized.profile["memory_snapshot"] is None  # CPU: said, not faked
    assert row.verified  # profiling happens after, and does not disturb, verification


def test_external_commands_profile_the_same_target(tmp_path):
    from aisp.harness.profiling import external_commands

    nsys, ncu = external_commands("ch16:flash_sdp", tmp_path)
    assert nsys.startswith("nsys profile") and "--targets ch16:flash_sdp" in nsys
    # Clocks stay as they are: ncu's default would lock them.
    assert ncu.startswith("ncu ") and "--clock-control none" in ncu and "--targets ch16:flash_sdp" in ncu
