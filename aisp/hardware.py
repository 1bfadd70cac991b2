"""What machine we are on, what it can do, and how fast it really is.

Contract:
- `parse_device(spec)` is the one check of a device string ('cpu', 'cuda', 'cuda:N'): anything
  else, or a GPU that torch does not see, is a `DeviceError` (a ValueError) naming the value, the
  valid ones and the fix, which every CLI turns into exit 2.
- `detect()` returns a `HardwareInfo` for the device aisp will use (the first visible GPU, or the
  CPU): names, compute capability, SMs, memory, L2, driver/CUDA/torch/triton versions.
- `hardware_key(name, count)` turns a device name into the slug that names expectation files
  (`h200`, `h100`, `b200`, `gb200`, `a100`, `l4`, `cpu`), prefixed `Nx_` for N > 1 visible GPUs.
- `ceilings(info)` returns the *measured* copy bandwidth (bytes read + written per second) and
  matmul rate for this hardware key, measured once and cached on disk, so reports can state the
  fraction of the ceiling a run reached. Datasheet numbers are never used: they are leads, not
  ceilings (a real device-to-device copy on an H200 reaches ~4.3 TB/s of the 4.8 advertised).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# Words in device names that say who made it or what board it sits on, not which chip it is.
_VENDOR_WORDS = {"nvidia", "amd", "tesla", "geforce", "quadro", "instinct", "radeon"}
_FORM_FACTOR = re.compile(r"^(sxm\d*|pcie|hbm\d*e?|\d+gb|mig|oam)$")


def hardware_key(device_name: str | None, device_count: int = 1) -> str:
    """Slug a device name: 'NVIDIA H100 80GB HBM3' -> 'h100'; 2 of them -> '2x_h100'.

    None (no GPU) gives 'cpu'. Form-factor words (SXM5, PCIe, 80GB, HBM3) are dropped because
    expectations depend on the chip, while variants that are different products (H100 NVL,
    RTX 4090) keep their distinguishing words.
    """
    if not device_name:
        return "cpu"
    tokens = [t for t in re.split(r"[\s\-_/]+", device_name.lower()) if t]
    kept = [t for t in tokens if t not in _VENDOR_WORDS and not _FORM_FACTOR.match(t)]
    slug = re.sub(r"[^a-z0-9_]", "", "_".join(kept)) or "gpu"
    return f"{device_count}x_{slug}" if device_count > 1 else slug


@dataclass(frozen=True)
class Capabilities:
    """Feature flags derived from compute capability; kernels and pairs branch on these."""

    bf16: bool
    tf32: bool
    fp8: bool            # sm89+: FP8 tensor cores (Ada, Hopper, Blackwell)
    flash_attention: bool  # sm80+: the flash SDPA backend
    hopper: bool         # sm90+: TMA, wgmma, thread-block clusters
    blackwell: bool      # sm100+: tcgen05, FP4

    @classmethod
    def from_compute_capability(cls, cc: tuple[int, int] | None) -> "Capabilities":
        if cc is None:  # CPU: bf16 math exists (slowly); no tensor-core features
            return cls(bf16=True, tf32=False, fp8=False, flash_attention=False, hopper=False,
                       blackwell=False)
        major, minor = cc
        num = major * 10 + minor
        return cls(bf16=num >= 80, tf32=num >= 80, fp8=num >= 89, flash_attention=num >= 80,
                   hopper=num >= 90, blackwell=num >= 100)


@dataclass(frozen=True)
class HardwareInfo:
    key: str
    device_type: str                      # 'cuda' or 'cpu'
    name: str
    device_count: int
    compute_capability: tuple[int, int] | None
    num_sms: int | None
    total_memory_bytes: int
    l2_cache_bytes: int | None
    driver_version: str | None
    cuda_version: str | None
    torch_version: str
    triton_version: str | None
    python_version: str
    cpu_model: str
    cpu_count: int
    capabilities: Capabilities = field(default_factory=lambda: Capabilities.from_compute_capability(None))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.device_type == "cuda" else torch.device("cpu")

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype real workloads use here: bf16 on GPUs that have it, float32 on the CPU
        (CPU bf16 matmuls are emulated and would make every CPU number meaningless)."""
        if self.device_type == "cuda" and self.capabilities.bf16:
            return torch.bfloat16
        if self.device_type == "cuda":
            return torch.float16
        return torch.float32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return d


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # triton is optional on CPU machines
        return None


def _driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class DeviceError(ValueError):
    """A device string that names no device aisp can run on; the message says which ones it can."""


_DEVICE_SPEC = re.compile(r"(cpu|cuda)(?::(\d+))?")


def parse_device(spec: str, source: str = "device", check_available: bool = True) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, checked against what torch sees here.

    `source` names where the value came from ('--device', 'AISP_DEVICE') so the message points at
    what to change. Other torch device types (mps, xpu, meta, ...) are rejected too: no kernel or
    workload here is written for them, and running them would be a silent substitute.
    `check_available=False` checks only the spelling (a config may be written on another machine).
    """
    m = _DEVICE_SPEC.fullmatch(spec.strip().lower()) if isinstance(spec, str) else None
    if m is None or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise DeviceError(f"{source} {spec!r} is not a device aisp runs on; valid: cpu, cuda, "
                          f"cuda:N (N < the number of visible GPUs)")
    if m.group(1) == "cpu":
        return torch.device("cpu")
    if not check_available:
        return torch.device("cuda", int(m.group(2))) if m.group(2) else torch.device("cuda")
    if not torch.cuda.is_available():
        raise DeviceError(f"{source} {spec!r} was asked for, but torch sees no CUDA GPU (torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                          + ("unset AISP_DEVICE or set it to cpu" if source == "AISP_DEVICE"
                             else "use cpu, or leave the device unset (cuda if there is one)"))
    if m.group(2) is None:
        return torch.device("cuda")
    index, count = int(m.group(2)), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{source} {spec!r}: torch sees {count} GPU(s), so valid indices are "
                          f"0..{count - 1} (CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return torch.device("cuda", index)


def detect(device: str | None = None) -> HardwareInfo:
    """Describe the device aisp will run on. `device` ('cpu'/'cuda') overrides; the environment
    variable AISP_DEVICE does the same for every command. Cached: detection shells out for the
    driver version, and every benchmark asks. Raises `DeviceError` for a device it cannot use."""
    if device:
        wanted = parse_device(device, "--device")
    elif os.environ.get("AISP_DEVICE"):
        wanted = parse_device(os.environ["AISP_DEVICE"], "AISP_DEVICE")
    else:
        wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.type == "cuda" and wanted.index not in (None, 0):
        # Benchmarks put their tensors on `HardwareInfo.device` (the first GPU) and some on plain
        # 'cuda' (the current one): honouring another index here would run them on GPU 0 anyway.
        raise DeviceError(f"device '{wanted}': benchmarks and `aisp hw` use the first visible GPU; "
                          f"select GPU {wanted.index} with CUDA_VISIBLE_DEVICES={wanted.index} and "
                          f"pass cuda")
    return _detect(wanted.type)


@functools.lru_cache(maxsize=4)
def _detect(wanted: str) -> HardwareInfo:
    common = dict(torch_version=torch.__version__, triton_version=_triton_version(),
                  python_version=platform.python_version(), cpu_model=_cpu_model(),
                  cpu_count=os.cpu_count() or 1)
    if wanted.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        cc = (props.major, props.minor)
        return HardwareInfo(
            key=hardware_key(props.name, count), device_type="cuda", name=props.name,
            device_count=count, compute_capability=cc, num_sms=props.multi_processor_count,
            total_memory_bytes=props.total_memory,
            l2_cache_bytes=getattr(props, "L2_cache_size", None),
            driver_version=_driver_version(), cuda_version=torch.version.cuda,
            capabilities=Capabilities.from_compute_capability(cc), **common)
    return HardwareInfo(
        key="cpu", device_type="cpu", name=common["cpu_model"], device_count=0,
        compute_capability=None, num_sms=None, total_memory_bytes=_total_ram_bytes(),
        l2_cache_bytes=None, driver_version=None, cuda_version=None, **common)


# ----------------------------------------------------------------------------- ceilings


@dataclass(frozen=True)
class Ceilings:
    """Measured peak rates on this hardware; the denominators of every '% of ceiling'."""

    copy_bytes_per_s: float      # device copy, bytes read + bytes written per second
    matmul_flops_per_s: float    # dense matmul in `matmul_dtype`
    matmul_dtype: str
    measured_at: str
    torch_version: str
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    """Where measured ceilings are kept between runs (AISP_CACHE_DIR overrides)."""
    return Path(os.environ.get("AISP_CACHE_DIR", Path.home() / ".cache" / "aisp"))


def _median_seconds(fn, repeats: int, sync) -> float:
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2]


def measure_ceilings(info: HardwareInfo) -> Ceilings:
    """Measure copy bandwidth and matmul rate with sizes that dwarf the caches.

    GPU: a 1 GiB device-to-device copy (2 GiB moved) and an 8192^3 matmul in the compute dtype,
    timed with CUDA events. CPU: a 256 MiB copy and a 2048^3 float32 matmul. Random data, never
    zeros (zeros run faster on some tensor cores and would inflate the ceiling).
    """
    dev = info.device
    dtype = info.compute_dtype
    if info.device_type == "cuda":
        n_copy, n_mm, reps = (1 << 30) // 4, 8192, 20
        sync = torch.cuda.synchronize
    else:
        n_copy, n_mm, reps = (256 << 20) // 4, 2048, 5
        sync = lambda: None  # noqa: E731
    src = torch.rand(n_copy, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), reps, sync)
    copy_bw = 2 * src.numel() * src.element_size() / copy_s
    del src, dst
    a = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
    b = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    mm_s = _median_seconds(lambda: a @ b, reps, sync)
    mm_rate = 2 * n_mm**3 / mm_s
    del a, b
    return Ceilings(copy_bytes_per_s=copy_bw, matmul_flops_per_s=mm_rate,
                    matmul_dtype=str(dtype).replace("torch.", ""),
                    measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    torch_version=torch.__version__,
                    method=f"median of {reps}: copy of {n_copy * 4 >> 20} MiB float32; "
                           f"{n_mm}^3 matmul")


def ceilings(info: HardwareInfo, remeasure: bool = False) -> Ceilings:
    """Measured ceilings for `info.key`, from the on-disk cache unless `remeasure`."""
    path = cache_dir() / f"ceilings_{info.key}.json"
    if not remeasure and path.exists():
        try:
            return Ceilings(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a stale or broken cache entry is simply measured again
    c = measure_ceilings(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(c.to_dict(), indent=2))
    return c
