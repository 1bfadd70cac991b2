"""`torch.compile` of a decoder: none, regional (each layer's two halves) or full (the forward).

Contract:
- `apply_compile(model, mode) -> CompileInfo` for mode in COMPILE_MODES, in place, once per
  model. Nothing compiles until the first forward; whoever runs the first forwards measures
  them with `CompileWatch` (the engine's warm-up, the cold-start child process) and gets a
  `CompileInfo` with the seconds they took, what the caches held and the graph count.
- `regional`: `LlamaDecoderLayer.pre_attention` and `post_attention` (the dense pieces around
  attention: norms, QKV with q/k-norm and RoPE; O projection, norm and MLP) are each compiled
  once, as functions of (layer, inputs). Dynamo caches compiled code by code object, and with
  inbuilt nn modules inlined a layer's parameters are graph inputs, not constants, so every
  layer runs the same compiled graph: the graph count does not grow with the number of layers.
  Attention runs eagerly between the halves on its real metadata, and so does the embedding,
  the final norm and the LM head. These halves are exactly what piecewise CUDA graphs capture,
  so compiled regions compose with them (a capture records the compiled kernels).
- `full`: the whole `forward(input_ids, positions, attn)` is one compiled graph; `forward`
  keeps its signature: it enters `attention_context(attn)` and calls the compiled body, whose
  attention is the opaque `aisp::attention` op (aisp.model.attention_op).
- Only the token dimension is dynamic (marked while a CompileWatch is open, see `_Region`):
  one graph serves every step size >= 2. Dynamo specialises sizes 0 and 1, so a step of one
  token has its own graph, and the first layer (no residual yet) has its own pre-attention
  graph. Per mode, after warm-up at one token and at two or more: regional 6 graphs (pre:
  {first layer, others} x {1, >= 2}; post: {1, >= 2}), full 2 — independent of the layer count
  and of the step's make-up (decodes, prefill chunks). `fullgraph=True`: a graph break is an
  error, not a silent split.
- Compiled code runs the plain-torch elementwise twins (`set_elementwise_kernels("torch")`):
  Inductor fuses their math itself, where hand-written Triton kernels would be opaque calls
  it cannot fuse across (vLLM likewise turns its custom elementwise ops off under Inductor).
- Recompiles are counted from Dynamo's per-code cache entries: `compiled_graphs(model)` is the
  live count; `recompiles(model, info)` is how many were added after the warm-up that `info`
  describes. Tests run steady-state steps under `torch.compiler.set_stance("fail_on_recompile")`
  as well, so a recompile fails loudly there.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from types import CodeType

import torch

from aisp.model.attention_op import OPAQUE_ATTENTION, attention_context
from aisp.model.llama import LlamaForCausalLM

COMPILE_MODES = ("none", "regional", "full")


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} unknown; choose one of {', '.join(COMPILE_MODES)} "
                         f"(none: eager; regional: each decoder layer's two halves around "
                         f"attention, one compiled region for all layers; full: the whole model)")
    return mode


@dataclass(frozen=True)
class CompileInfo:
    mode: str                                # none | regional | full
    regions: tuple[str, ...] = ()            # the compiled functions
    elementwise_kernels: str | None = None   # what the compiled code runs (None: mode none)
    compile_s: float | None = None           # the warm-up forwards, compile included; None: not run
    cache: str = "n/a"                       # what those forwards found (see CompileWatch)
    graphs: int = 0                          # graphs of its regions after warm-up, process-wide
    graphs_compiled: int = 0                 # of which the warm-up compiled (0: found in memory)
    cache_hits: int = 0                      # Inductor FX graph cache hits in the warm-up
    cache_misses: int = 0

    @property
    def compiled(self) -> bool:
        return self.mode != "none"

    def summary(self) -> str:
        """One line for startup logs: mode, compile seconds, cache state, graph count."""
        if not self.compiled:
            return "compile none (eager)"
        secs = "not warmed up" if self.compile_s is None else f"{self.compile_s:.1f} s"
        return (f"compile {self.mode}: {secs}, {self.graphs_compiled} graphs compiled, cache "
                f"{self.cache} ({self.cache_hits} hits, {self.cache_misses} misses)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the compiled bodies ---------------------------------------------------------------------------
# Module-level functions, so their code objects (Dynamo's cache keys) are shared by every model.

def _full_forward(model: LlamaForCausalLM, input_ids: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    return type(model).forward(model, input_ids, positions, OPAQUE_ATTENTION)


class _Region:
    """One compiled function. While `warming` (a CompileWatch is open) it marks the token dim
    (dim 0) of its tensor inputs dynamic, including the tensors a RoPE closure carries (cos and
    sin [T, 1, D]): Dynamo reads the marks only when it compiles, and marking costs ~1 us per
    tensor, too much for every call of every layer. Unmarked, a first compile is static in T and
    the next step size recompiles it dynamic (automatic dynamic shapes): one graph more, no error.
    Only dynamic in T: `dynamic=True` would make every dim symbolic, and Dynamo's duck sizing
    then ties equal sizes together (a step of 32 tokens vs 32 heads), a recompile waiting for
    the step size that happens to match a head count or head_dim."""

    def __init__(self, fn) -> None:  # noqa: ANN001
        self.code = fn.__code__
        self.compiled = torch.compile(fn, fullgraph=True)
        self.warming = False

    def __call__(self, *args):  # noqa: ANN002, ANN204
        if self.warming:
            tokens = next(a.shape[0] for a in args if isinstance(a, torch.Tensor))
            for a in args:
                cells = [c.cell_contents for c in (getattr(a, "__closure__", None) or ())]
                for t in (a, *cells):
                    if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == tokens:
                        torch._dynamo.maybe_mark_dynamic(t, 0)
        return self.compiled(*args)


def _regions(model: LlamaForCausalLM) -> dict[str, _Region]:
    """The compiled regions `apply_compile` installed on `model` (empty when none)."""
    forward = vars(model).get("forward")
    if forward is not None:
        return {f"{type(model).__name__}.forward": forward.region}
    first = model.layers[0]
    return {f"{type(first).__name__}.{name}": vars(first)[name].func
            for name in ("pre_attention", "post_attention") if name in vars(first)}


def apply_compile(model: LlamaForCausalLM, mode: str) -> CompileInfo:
    """Compile `model` in place for `mode` (see module docstring); returns the not-yet-warm info."""
    check_compile_mode(mode)
    if _regions(model):
        raise ValueError("this model was already compiled (apply_compile runs once per model); "
                         "build a fresh model for another mode")
    if mode == "none":
        return CompileInfo("none")
    model.set_elementwise_kernels("torch")
    if mode == "regional":
        layer_type = type(model.layers[0])
        pre, post = _Region(layer_type.pre_attention), _Region(layer_type.post_attention)
        for layer in model.layers:
            # Instance attributes shadow the methods: layer.forward and piecewise graphs call these.
            layer.pre_attention = functools.partial(pre, layer)
            layer.post_attention = functools.partial(post, layer)
    else:
        body = _Region(_full_forward)

        def forward(input_ids: torch.Tensor, positions: torch.Tensor,
                    attn) -> torch.Tensor:  # noqa: ANN001
            with attention_context(attn):
                return body(model, input_ids, positions)

        forward.region = body
        model.forward = forward
    return CompileInfo(mode, tuple(_regions(model)), elementwise_kernels="torch")


def _cache_entries(code: CodeType) -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    return len(_debug_get_cache_entry_list(code))


def compiled_graphs_of(model: LlamaForCausalLM) -> dict[str, int]:
    """Compiled graphs per region, now (process-wide: a region's code is shared by every model)."""
    return {name: _cache_entries(region.code) for name, region in _regions(model).items()}


def compiled_graphs(model: LlamaForCausalLM) -> int:
    return sum(compiled_graphs_of(model).values())


def recompiles(model: LlamaForCausalLM, info: CompileInfo) -> int:
    """Graphs compiled after the warm-up `info` describes: nonzero means a step recompiled."""
    return compiled_graphs(model) - info.graphs


def _cache_counters() -> tuple[int, int]:
    """(hits, misses) of Inductor's FX graph cache: one lookup per graph Inductor compiles.
    (AOT autograd's cache is looked up too, but it also counts lookups it bypasses, so its
    misses do not mean work was redone; a hit there loads the FX graph, counted here.)"""
    from torch._dynamo.utils import counters
    ind = counters["inductor"]
    return ind["fxgraph_cache_hit"], ind["fxgraph_cache_miss"]


class CompileWatch:
    """Time the first forwards of a compiled model and read what the compile caches did.

        watch = CompileWatch(model, info)
        with watch:
            model(...)            # the first steps: they compile
        info = watch.result()     # compile_s, cache verdict, graph count

    While the watch is open the model's regions mark their inputs' token dim dynamic (see
    `_Region`), so the graphs compiled inside it are dynamic in the step size from the start.
    The verdict is measured, not assumed: `cold` (every lookup of Inductor's FX graph cache
    missed), `warm` (every one hit: the compiled graphs came from disk; Dynamo still traced),
    `partial` (both), `in-memory` (no new graph and no lookup: this process had compiled these
    graphs already), `uncached` (new graphs but no lookup: the caches are disabled).
    """

    def __init__(self, model: LlamaForCausalLM, info: CompileInfo):
        self.model, self.info = model, info
        self._t0 = 0.0
        self._seconds = 0.0
        self._before = (0, 0)
        self._after = (0, 0)
        self._graphs_before = 0

    def __enter__(self) -> CompileWatch:
        self._before = _cache_counters()
        self._graphs_before = compiled_graphs(self.model)
        for region in _regions(self.model).values():
            region.warming = True
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        for region in _regions(self.model).values():
            region.warming = False
        device = next(self.model.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._seconds = time.perf_counter() - self._t0
        self._after = _cache_counters()

    def result(self) -> CompileInfo:
        hits = self._after[0] - self._before[0]
        misses = self._after[1] - self._before[1]
        graphs = compiled_graphs(self.model)
        if not self.info.compiled:
            verdict = "n/a"
        elif hits == misses == 0:
            verdict = "in-memory" if graphs == self._graphs_before else "uncached"
        else:
            verdict = "cold" if hits == 0 else "warm" if misses == 0 else "partial"
        return dataclasses.replace(self.info, compile_s=self._seconds, cache=verdict, graphs=graphs,
                                   graphs_compiled=graphs - self._graphs_before,
                                   cache_hits=hits, cache_misses=misses)
