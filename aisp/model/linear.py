"""Linear layers built through one factory, each holding its weights through a *linear method*.

Contract:
- `make_linear(input_size, output_sizes, bias=, dtype=, method=, shard_ids=)` is the only way
  the model builds a matmul layer. `output_sizes` lists the logical output shards fused into
  one GEMM: `[q_size, kv_size, kv_size]` with shard ids ("q", "k", "v") for QKV, `[I, I]` with
  ("gate", "up") for gate-up, one size (shard id None) for a plain projection. The layer's
  output is the shards side by side, in that order.
- `Linear.forward(x)` is `method.apply(layer, x)`; the layer never branches on the method.
- `Linear.weight_loader(param, loaded, shard_id=None)` copies one checkpoint tensor into its
  place in `param`; `Linear.shard_view(param_name, shard_id)` is that place (the loader's
  inverse, `hf_state_dict`, reads it). How a parameter is laid out (`ParamLayout`) is recorded
  on the layer by the method that created it, not on the parameter: `to_empty` replaces
  parameters and would drop attributes set on them.
- `process_weights_after_loading(model)` runs every linear method's hook once the checkpoint
  is in (the loader and the synthetic presets call it); the unquantized method does nothing.

The interface the next methods implement (`LinearMethod`):

    create_weights(layer, input_size_per_partition, output_partition_sizes, dtype)
        register the parameters on `layer` (layer.register_parameter) and their layouts
        (layer.set_layout(name, ParamLayout.*)); `output_partition_sizes` are this rank's
        sizes of the logical shards, `input_size_per_partition` this rank's input columns.
        Every parameter registered here is a checkpoint tensor (per shard): the loader
        expects `<hf module>.<param name>` for each; a WHOLE parameter of a fused layer
        receives every shard's tensor in turn (the hook reconciles them, e.g. takes the max).
    apply(layer, x) -> y          the forward: x [T, input] -> y [T, sum(output sizes)]
    process_weights_after_loading(layer)   a hook run once after loading; parameters it
        registers are derived, never looked for in a checkpoint

How FP8 plugs in (not implemented here): an `Fp8LinearMethod` whose `create_weights`
registers `weight` in the checkpoint's dtype when the checkpoint is bf16 (quantize at load) or
in float8_e4m3fn when it is an FP8 checkpoint, plus `weight_scale` with layout PER_SHARD (one
float32 scale per logical shard: q, k and v keep their own, as HF FP8 checkpoints store them)
and, for static activation scales, `input_scale` with layout WHOLE. The loader needs nothing
new: checkpoint names `*.weight_scale` / `*.input_scale` map to those parameters with the
same shard ids, and `weight_loader` puts each scalar in its slot. `process_weights_after_loading`
then quantizes a bf16 weight (per-tensor amax / 448) or merges the per-shard scales (requantize
to their max) and replaces the parameters; `apply` calls torch._scaled_mm.

How tensor parallelism plugs in (not implemented here): a column-parallel layer builds with
`output_partition_sizes = [s // tp_size for s in output_sizes]` and its `weight_loader`
narrows each loaded ROWS shard to rows [rank * part, (rank + 1) * part) before the copy; a
row-parallel layer builds with `input_size // tp_size` and narrows the loaded weight's
COLUMNS (dim 1), and its caller all-reduces the output. The partition is a property of the
layer (`tp_rank`, `tp_size`, both 0/1 today), so every method works under either.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ShardId = str | None


class ParamLayout(enum.Enum):
    """Where a checkpoint tensor for shard `shard_id` goes inside a parameter."""

    ROWS = "rows"            # dim 0 is the output: shard k is rows [offset_k, offset_k + size_k)
    PER_SHARD = "per_shard"  # one entry per logical shard (FP8 per-tensor weight scales)
    WHOLE = "whole"          # the whole parameter, whatever the shard (a replicated scalar)


class LinearMethod(abc.ABC):
    """How a `Linear` creates, loads and applies its weights (see the module docstring)."""

    @abc.abstractmethod
    def create_weights(self, layer: Linear, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], dtype: torch.dtype | None) -> None:
        """Register the layer's parameters and their layouts."""

    @abc.abstractmethod
    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """The forward: x [T, input] -> y [T, sum(output sizes)]."""

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Run once after the checkpoint is loaded (e.g. quantize bf16 weights to FP8)."""


class UnquantizedLinearMethod(LinearMethod):
    """`weight` [sum(output sizes), input] in the model's dtype; y = x @ weight^T (+ bias)."""

    def create_weights(self, layer: Linear, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], dtype: torch.dtype | None) -> None:
        weight = torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=dtype)
        _init_uniform(weight, input_size_per_partition)
        layer.register_parameter("weight", nn.Parameter(weight))
        layer.set_layout("weight", ParamLayout.ROWS)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


# One instance for the whole model: compiled regions guard on the objects a forward touches,
# so every layer holding the same method keeps one graph for all layers.
UNQUANTIZED = UnquantizedLinearMethod()


class Linear(nn.Module):
    """One GEMM over `input_size` features producing the logical shards `output_sizes`.

    `bias` (ROWS layout, the output's dtype) is the layer's, not the method's: every method adds
    it after its matmul. Parameters are created by the method; see the module docstring.
    """

    bias: nn.Parameter | None

    def __init__(self, input_size: int, output_sizes: Sequence[int], *, bias: bool,
                 dtype: torch.dtype | None, method: LinearMethod,
                 shard_ids: Sequence[ShardId] | None = None) -> None:
        super().__init__()
        output_sizes = tuple(int(s) for s in output_sizes)
        shard_ids = tuple(shard_ids) if shard_ids is not None else (
            (None,) if len(output_sizes) == 1 else tuple(str(i) for i in range(len(output_sizes))))
        if len(shard_ids) != len(output_sizes) or len(set(shard_ids)) != len(shard_ids):
            raise ValueError(f"shard_ids {shard_ids} must name each of the {len(output_sizes)} "
                             f"output shards {output_sizes} once")
        self.input_size, self.output_sizes, self.shard_ids = input_size, output_sizes, shard_ids
        self.output_size = sum(output_sizes)
        self.tp_rank, self.tp_size = 0, 1  # the partition; see "tensor parallelism" above
        self.method = method
        self.layouts: dict[str, ParamLayout] = {}
        method.create_weights(self, input_size, output_sizes, dtype)
        self.register_parameter("bias", nn.Parameter(_init_uniform(
            torch.empty(self.output_size, dtype=dtype), input_size)) if bias else None)
        if bias:
            self.set_layout("bias", ParamLayout.ROWS)

    def set_layout(self, param_name: str, layout: ParamLayout) -> None:
        self.layouts[param_name] = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def _shard_index(self, shard_id: ShardId) -> int:
        if shard_id not in self.shard_ids:
            raise ValueError(f"shard {shard_id!r} is not one of this layer's shards {self.shard_ids}")
        return self.shard_ids.index(shard_id)

    def shard_view(self, param_name: str, shard_id: ShardId = None) -> torch.Tensor:
        """The part of parameter `param_name` that shard `shard_id`'s checkpoint tensor fills."""
        param = getattr(self, param_name)
        layout = self.layouts[param_name]
        if layout is ParamLayout.WHOLE:
            return param
        k = self._shard_index(shard_id)
        if layout is ParamLayout.PER_SHARD:
            return param[k]
        start = sum(self.output_sizes[:k])
        return param[start:start + self.output_sizes[k]]

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId = None) -> None:
        """Copy checkpoint tensor `loaded` (shard `shard_id`) into its place in `param`."""
        name = next((n for n, p in self.named_parameters(recurse=False) if p is param), None)
        if name is None:
            raise ValueError(f"the parameter of shape {tuple(param.shape)} is not one of this layer's "
                             f"({', '.join(n for n, _ in self.named_parameters(recurse=False))})")
        target = self.shard_view(name, shard_id)
        if tuple(loaded.shape) != tuple(target.shape):
            raise ValueError(f"{name} shard {shard_id!r}: checkpoint tensor has shape "
                             f"{tuple(loaded.shape)}, the layer expects {tuple(target.shape)}")
        target.copy_(loaded)

    def extra_repr(self) -> str:
        shards = ", ".join(f"{s}={n}" for s, n in zip(self.shard_ids, self.output_sizes))
        return (f"in={self.input_size}, out=[{shards}], bias={self.bias is not None}, "
                f"method={type(self.method).__name__}")


def _init_uniform(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for models built without a
    checkpoint (a no-op on the meta device, where the loader and the presets build)."""
    bound = fan_in ** -0.5
    return nn.init.uniform_(t, -bound, bound)


def make_linear(input_size: int, output_sizes: int | Sequence[int], *, bias: bool = False,
                dtype: torch.dtype | None = None, method: LinearMethod | None = None,
                shard_ids: Sequence[ShardId] | None = None) -> Linear:
    """The one factory for the model's linears; `method` None means `UNQUANTIZED`."""
    sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
    return Linear(input_size, sizes, bias=bias, dtype=dtype, method=method or UNQUANTIZED,
                  shard_ids=shard_ids)


@torch.no_grad()
def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId = None) -> None:
    """For parameters of layers without their own loader (norms, embeddings): a whole copy."""
    if shard_id is not None:
        raise ValueError(f"a parameter of shape {tuple(param.shape)} has no shards; got shard {shard_id!r}")
    if tuple(loaded.shape) != tuple(param.shape):
        raise ValueError(f"checkpoint tensor has shape {tuple(loaded.shape)}, the parameter "
                         f"{tuple(param.shape)}")
    param.copy_(loaded)


def process_weights_after_loading(model: nn.Module) -> None:
    """Run every linear's method hook once, after its weights are in."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.method.process_weights_after_loading(module)
