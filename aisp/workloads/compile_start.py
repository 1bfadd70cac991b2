"""Cold and warm start of a compiled model, each measured in a fresh child process.

    python -m aisp.workloads.compile_start --model llama-3-8b [--modes none,full,regional]
        [--layers N] [--decode-batch 64] [--context-len 512] [--prefill 2x128]
        [--iterations 20] [--json PATH [--append]]

What one start is (`run_start(spec, cache_dir)`): a new Python process, with
`TORCHINDUCTOR_CACHE_DIR` (and `TRITON_CACHE_DIR` under it) pointed at `cache_dir`, imports
torch and aisp, builds the model (preset, dtype, device; random weights), builds the
workload's steps (aisp.workloads.model_step: a decode step and a mixed prefill+decode step),
applies the compile mode and runs the first forward of every step. It reports the seconds from
the parent's spawn to the last of those outputs (interpreter start, imports, model build and
compile included: what a user waits for), the part that was the first forwards, and what the
compile caches did, measured from Inductor's and AOT autograd's cache counters
(aisp.model.compile.CompileWatch) — plus whether the folder was empty when the child started.
A child process, so nothing compiled or cached in memory by the parent can flatter it.

`cold_and_warm_start(spec)` runs two starts on one new, empty folder: the first is cold (it
fills the folder), the second warm (the FX graphs come from it; Dynamo still traces). Every
report carries `cache_warm` and `cache_dir_was_empty`, so no number is shown without its cache
state. With `time_iterations > 0` the child also times each step after its first output (the
steady state, on the harness's timer), and counts graphs compiled after the first outputs: a
nonzero `recompiles` means a steady-state step recompiled.

The command-line form runs cold and warm starts for each mode and prints one table row per
mode, with the warm child's step latencies; the issue's targets are regional cold start <= 1/5
of full, and regional steady-state step latency within 5% of full.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_MARKER = "AISP_START_REPORT "
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StartSpec:
    model: str = "tiny"                 # preset name
    mode: str = "regional"              # aisp.model.compile.COMPILE_MODES
    device: str = "cpu"
    dtype: str = "float32"
    num_layers: int | None = None       # None: the preset's; fewer to fit a budget (stated)
    # (num_decodes, context_len, num_prefills, prefill_len) per step, see model_step.StepShape
    shapes: tuple[tuple[int, int, int, int], ...] = ((4, 24, 0, 0), (4, 24, 2, 6))
    time_iterations: int = 0            # > 0: time each step after the first outputs
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StartSpec:
        values = json.loads(text)
        values["shapes"] = tuple(tuple(s) for s in values["shapes"])
        return cls(**values)


# -- the child -------------------------------------------------------------------------------------

def _child(spec: StartSpec, spawned_at: float) -> dict[str, Any]:
    t_main = time.time()
    cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # False when unset: torch's default folder, whose state this child does not know.
    was_empty = bool(cache_dir) and (not Path(cache_dir).exists()
                                     or not any(Path(cache_dir).iterdir()))
    import torch

    from aisp.engine.config import DTYPES, EngineConfig
    from aisp.harness.timing import time_callable
    from aisp.model.compile import CompileWatch, apply_compile, recompiles
    from aisp.model.presets import build_synthetic, get_preset
    from aisp.workloads.model_step import StepShape, build_step

    t_imported = time.time()
    device, dtype = torch.device(spec.device), DTYPES[spec.dtype]
    config = get_preset(spec.model)
    if spec.num_layers is not None:
        config = config.replace(num_hidden_layers=spec.num_layers)
    kernels = EngineConfig(device=spec.device).resolve_kernels(device, config.head_dim)
    with torch.inference_mode():
        model, config = build_synthetic(config, device, dtype, spec.seed)
        model.set_elementwise_kernels(kernels)   # as the engine does; compile picks its own
        steps = [build_step(StepShape(*s), config, device, dtype, spec.seed) for s in spec.shapes]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_built = time.time()
        info = apply_compile(model, spec.mode)
        watch = CompileWatch(model, info)
        with watch:
            for step in steps:
                step.logits(model, kernels)
        t_first = time.time()
        info = watch.result()
        report: dict[str, Any] = {
            "spec": dataclasses.asdict(spec), "num_layers": config.num_hidden_layers,
            "kernels": kernels, "elementwise_kernels": info.elementwise_kernels or kernels,
            "torch": torch.__version__,
            "cache_dir_was_empty": was_empty, "cache": info.cache,
            "cache_warm": info.cache == "warm", "cache_hits": info.cache_hits,
            "cache_misses": info.cache_misses, "graphs": info.graphs,
            "import_s": t_imported - spawned_at, "interpreter_s": t_main - spawned_at,
            "build_s": t_built - t_imported, "first_forwards_s": t_first - t_built,
            "start_to_first_output_s": t_first - spawned_at,
        }
        if spec.time_iterations > 0:
            report["steps"] = {}
            for shape, step in zip(spec.shapes, steps):
                stats = time_callable(lambda step=step: step.logits(model, kernels),
                                      iterations=spec.time_iterations, warmup=3, device=device)
                report["steps"][StepShape(*shape).label] = {
                    "num_tokens": StepShape(*shape).num_tokens, "median_ms": stats.median_ms,
                    "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms}
            report["recompiles"] = recompiles(model, info) if info.compiled else 0
    return report


# -- the parent ------------------------------------------------------------------------------------

def run_start(spec: StartSpec, cache_dir: Path | str, timeout_s: float = 1800) -> dict[str, Any]:
    """One start in a fresh child process whose compile caches live in `cache_dir`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # this checkout's aisp
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir),
               TRITON_CACHE_DIR=str(cache_dir / "triton"), PYTHONPATH=os.pathsep.join(path))
    spawned = time.time()
    proc = subprocess.run([sys.executable, "-m", "aisp.workloads.compile_start", "--child",
                           spec.to_json(), "--spawned-at", repr(spawned)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.time() - spawned
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(REPORT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"compile-start child ({spec.mode}, {spec.model}) exited with "
                           f"{proc.returncode}:\n{tail}")
    report = json.loads(lines[-1][len(REPORT_MARKER):])
    report["process_wall_s"] = wall
    return report


def cold_and_warm_start(spec: StartSpec, timeout_s: float = 1800) -> dict[str, dict[str, Any]]:
    """Two starts on one new empty cache folder: cold (fills it), then warm (reads it).
    Only the warm one times the steps (`spec.time_iterations`), after its first outputs."""
    with tempfile.TemporaryDirectory(prefix="aisp-compile-cache-") as folder:
        cold = run_start(dataclasses.replace(spec, time_iterations=0), folder, timeout_s)
        warm = run_start(spec, folder, timeout_s)
    return {"cold": cold, "warm": warm}


# -- the GPU script --------------------------------------------------------------------------------

def _table(rows: list[dict[str, Any]]) -> str:
    labels = [lbl for lbl in rows[0]["warm"].get("steps", {})]
    head = ["mode", "cold start s", "cold cache", "cold compile s", "warm start s", "warm cache",
            "warm compile s", "graphs"] + [f"{lbl} ms" for lbl in labels] + ["recompiles"]
    out = [head]
    for r in rows:
        c, w = r["cold"], r["warm"]
        out.append([r["mode"], f"{c['start_to_first_output_s']:.1f}", c["cache"],
                    f"{c['first_forwards_s']:.1f}", f"{w['start_to_first_output_s']:.1f}",
                    w["cache"], f"{w['first_forwards_s']:.1f}", str(w["graphs"])]
                   + [f"{w['steps'][lbl]['median_ms']:.3f}" for lbl in labels]
                   + [str(w.get("recompiles", "-"))])
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(wd) for cell, wd in zip(row, widths)) for row in out)


def _ratios(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["mode"]: r for r in rows}
    if "full" not in by or "regional" not in by:
        return []
    full, reg = by["full"], by["regional"]
    lines = []
    for when in ("cold", "warm"):
        a, b = reg[when]["first_forwards_s"], full[when]["first_forwards_s"]
        sa, sb = reg[when]["start_to_first_output_s"], full[when]["start_to_first_output_s"]
        lines.append(f"{when}: regional / full first forwards (compile) {a:.1f} / {b:.1f} s = "
                     f"{a / b:.3f}; start to first output {sa:.1f} / {sb:.1f} s = {sa / sb:.3f}")
    for lbl, step in reg["warm"].get("steps", {}).items():
        f = full["warm"]["steps"][lbl]["median_ms"]
        lines.append(f"{lbl}: regional / full step latency {step['median_ms']:.3f} / {f:.3f} ms = "
                     f"{step['median_ms'] / f:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--modes", default="none,full,regional")
    p.add_argument("--layers", type=int, default=None, help="fewer layers than the preset's")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on a CPU")
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--context-len", type=int, default=512)
    p.add_argument("--prefill", default="2x128", help="NUMxLEN prefill chunks of the mixed step")
    p.add_argument("--iterations", type=int, default=20, help="timed steps per shape (warm child)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--append", action="store_true",
                   help="keep the other modes' rows already in --json (same model and shapes), "
                        "so modes can run as separate commands and still print one table")
    args = p.parse_args(argv)
    if args.child:
        report = _child(StartSpec.from_json(args.child), args.spawned_at or time.time())
        print(REPORT_MARKER + json.dumps(report), flush=True)
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    num_prefills, prefill_len = (int(x) for x in args.prefill.split("x"))
    shapes = ((args.decode_batch, args.context_len, 0, 0),
              (args.decode_batch, args.context_len, num_prefills, prefill_len))
    rows = []
    if args.append and args.json and args.json.exists():
        old = json.loads(args.json.read_text())
        if (old["model"], old["device"], old["dtype"], old.get("shapes")) != \
                (args.model, device, dtype, [list(s) for s in shapes]):
            raise SystemExit(f"--append: {args.json} holds another model, device, dtype or step "
                             f"shapes; use another --json")
        rows = [r for r in old["rows"] if r["mode"] not in args.modes.split(",")]
    for mode in args.modes.split(","):
        spec = StartSpec(model=args.model, mode=mode, device=device, dtype=dtype,
                         num_layers=args.layers, shapes=shapes, time_iterations=args.iterations)
        print(f"{mode}: cold start, then warm start (fresh child processes)...", flush=True)
        rows.append({"mode": mode, **cold_and_warm_start(spec)})
    layers = rows[0]["cold"]["num_layers"]
    print(f"\n{args.model} ({layers} layers), {device}, {dtype}, torch "
          f"{rows[0]['cold']['torch']}; start = spawn to first output of both steps (seconds); "
          f"compile s = the first forwards; step ms = median of {args.iterations} in the warm "
          f"child")
    print(_table(rows))
    for line in _ratios(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, "dtype": dtype,
                                         "shapes": shapes, "num_layers": layers, "rows": rows},
                                        indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
