import json
import re

import pytest
import torch

from aisp.hardware import Capabilities, ceilings, detect, hardware_key


@pytest.mark.parametrize("name,count,key", [
    ("NVIDIA H200", 1, "h200"),
    ("NVIDIA H100 80GB HBM3", 1, "h100"),
    ("NVIDIA H100 PCIe", 1, "h100"),
    ("NVIDIA H100 NVL", 1, "h100_nvl"),
    ("NVIDIA B200", 1, "b200"),
    ("NVIDIA GB200", 4, "4x_gb200"),
    ("NVIDIA A100-SXM4-80GB", 1, "a100"),
    ("NVIDIA A100-PCIE-40GB", 1, "a100"),
    ("NVIDIA L4", 1, "l4"),
    ("Tesla T4", 1, "t4"),
    ("NVIDIA GeForce RTX 4090", 1, "rtx_4090"),
    ("NVIDIA H200", 8, "8x_h200"),
    ("AMD Instinct MI300X", 1, "mi300x"),
    (None, 0, "cpu"),
    ("", 0, "cpu"),
])
def test_hardware_key_from_device_names(name, count, key):
    assert hardware_key(name, count) == key


@pytest.mark.parametrize("cc,fp8,hopper,blackwell,bf16", [
    ((8, 0), False, False, False, True),
    ((8, 9), True, False, False, True),
    ((9, 0), True, True, False, True),
    ((10, 0), True, True, True, True),
    ((7, 5), False, False, False, False),
])
def test_capabilities_follow_compute_capability(cc, fp8, hopper, blackwell, bf16):
    caps = Capabilities.from_compute_capability(cc)
    assert (caps.fp8, caps.hopper, caps.blackwell, caps.bf16) == (fp8, hopper, blackwell, bf16)


def test_detect_cpu_reports_versions():
    info = detect("cpu")
    assert info.key == "cpu" and info.device_type == "cpu"
    assert info.torch_version == torch.__version__
    assert info.cpu_count >= 1 and info.total_memory_bytes > 0
    assert info.compute_dtype == torch.float32


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    # A ValueError: the CLIs turn it into a message and exit 2, never a traceback.
    with pytest.raises(ValueError, match="--device 'cuda' was asked for, but torch sees no CUDA "
                                         "GPU.*use cpu"):
        detect("cuda")
    monkeypatch.setenv("AISP_DEVICE", "cuda:0")
    with pytest.raises(ValueError, match="AISP_DEVICE 'cuda:0' .*no CUDA GPU.*unset AISP_DEVICE"):
        detect()


@pytest.mark.parametrize("spec", ["tpu", "mps", "cuda0", "cuda:-1", "cpu:2", "xla:0"])
def test_unknown_devices_are_refused_listing_the_valid_ones(spec, monkeypatch):
    with pytest.raises(ValueError, match=rf"--device '{re.escape(spec)}' is not a device aisp runs "
                                         r"on; valid: cpu, cuda, cuda:N"):
        detect(spec)
    monkeypatch.setenv("AISP_DEVICE", spec)   # benchmarks read the device from here
    with pytest.raises(ValueError, match=rf"AISP_DEVICE '{re.escape(spec)}' is not a device"):
        detect()


@pytest.mark.parametrize("spec", ["cpu", "CPU", "cpu:0"])
def test_cpu_spellings_are_accepted(spec):
    assert detect(spec).device_type == "cpu"


def test_ceilings_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AISP_CACHE_DIR", str(tmp_path))
    info = detect("cpu")
    first = ceilings(info)
    assert first.copy_bytes_per_s > 1e8 and first.matmul_flops_per_s > 1e8
    cached = json.loads((tmp_path / "ceilings_cpu.json").read_text())
    assert cached["copy_bytes_per_s"] == first.copy_bytes_per_s
    # A second call reads the cache instead of measuring (a remeasure would differ in time).
    assert ceilings(info).measured_at == first.measured_at
    (tmp_path / "ceilings_cpu.json").write_text("{broken")
    assert ceilings(info).copy_bytes_per_s > 0  # a broken cache is re-measured, not fatal
