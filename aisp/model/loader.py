"""Load an HF-layout folder (config.json + safetensors) into its registered model class.

Contract:
- `load_model(path, device, dtype, linear_method=None) -> (model, config)` reads `model.safetensors`, or the shards
  listed in `model.safetensors.index.json`, with `safetensors` only (weights are never unpickled;
  a folder with only `pytorch_model.bin` is refused with the fix).
- The architecture registry (aisp.model.registry) gives the model class and the HF names; every
  HF tensor name maps to one shard of one of our parameters (`weight_targets`, asked of the
  layers): q/k/v go to the fused `qkv_proj`'s shards, gate/up to `gate_up_proj`'s, and the
  owning layer's `weight_loader(param, tensor, shard_id)` copies each. Before any data is read, the
  headers are checked: a missing tensor, an unexpected tensor, or a shape that disagrees with
  config.json is an error naming the tensor, the file and both shapes. `lm_head.weight` may be
  absent only when `tie_word_embeddings` is set (present and tied, it must equal the embedding).
- A file that cannot be read as what it should be (a safetensors file cut short, a damaged
  index) is a ValueError naming the file, the problem and the fix; a folder without weights is
  a FileNotFoundError saying what it holds.
- Tensors are read shard by shard straight onto `device` and copied into parameters already
  allocated there in `dtype`, so peak extra memory is one tensor, not one checkpoint.
- `hf_state_dict(model)` is the inverse mapping (fused parameters split back into HF names),
  used to write checkpoints that transformers loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from aisp.model.config import ModelConfig, read_json_file
from aisp.model.linear import (LinearMethod, ShardId, default_weight_loader,
                               process_weights_after_loading)
from aisp.model.llama import LlamaForCausalLM
from aisp.model.registry import WeightMapping, get_architecture

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class WeightTarget:
    """One HF tensor's place in our model: shard `shard_id` of parameter `param` of `module`."""

    hf_name: str
    module: str
    param: str
    shard_id: ShardId
    shape: tuple[int, ...]


def weight_targets(model: nn.Module, mapping: WeightMapping) -> dict[str, WeightTarget]:
    """Every tensor an HF checkpoint of `model` holds (by HF name), and where each goes.

    Asked of the layers: a layer that owns its loading (a fused linear) lists its `shard_ids`
    and the `shard_view` each fills; any other parameter is one tensor of its own shape. Works
    on a model built on the meta device (shapes only).
    """
    targets: dict[str, WeightTarget] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            for shard_id in getattr(module, "shard_ids", (None,)):
                shape = tuple(_shard_view(module, param_name, shard_id).shape)
                hf = mapping.hf_name(module_name, param_name, shard_id)
                targets[hf] = WeightTarget(hf, module_name, param_name, shard_id, shape)
    return targets


def _shard_view(module: nn.Module, param_name: str, shard_id: ShardId) -> torch.Tensor:
    """What one checkpoint tensor fills: the layer says so if it has shards, else the whole parameter."""
    if hasattr(module, "shard_view"):
        return module.shard_view(param_name, shard_id)
    return getattr(module, param_name)


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of an HF folder, single-file or sharded (shards in index order)."""
    folder = Path(path)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if (folder / INDEX_FILE).is_file():
        index = read_json_file(folder / INDEX_FILE, "a safetensors shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{folder / INDEX_FILE} has no 'weight_map' (tensor name -> shard "
                             f"file); the index is damaged: fetch or write it again")
        files = [folder / name for name in dict.fromkeys(sorted(weight_map.values()))]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"{INDEX_FILE} lists shards that are not in {folder}: {', '.join(absent)}")
        return files
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    hint = ""
    if any(name.endswith(".bin") or name.endswith(".pt") for name in found):
        hint = (" Pickled weights (.bin/.pt) are never loaded here; convert them once with "
                "transformers (from_pretrained(...).save_pretrained(out, safe_serialization=True)).")
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder} (found: "
                            f"{', '.join(found) or 'nothing'}), so there are no weights to load; put the "
                            f"checkpoint's *.safetensors files beside its config.json.{hint}")


def load_model(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
               linear_method: LinearMethod | None = None) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model for `path`'s config.json on `device` in `dtype` (default: the config's), fill it.

    The model class and the HF names come from the architecture registry; every tensor is handed
    to the layer that owns its parameter (`weight_loader`), then each linear method's
    `process_weights_after_loading` runs (e.g. an FP8 method quantizes there).
    """
    config = ModelConfig.from_file(Path(path) / "config.json")
    arch = get_architecture(config.architecture)
    dtype = dtype or config.torch_dtype
    device = _normalise_device(device)
    files = checkpoint_files(path)
    with torch.device("meta"):  # shapes first: the headers are checked before any allocation
        model = arch.model_class(config, dtype=dtype, linear_method=linear_method)
    targets = weight_targets(model, arch.weights)
    located = _check_headers(files, targets, config, arch.weights)
    model = model.materialize(device)
    modules = dict(model.named_modules())
    tied_lm_head: tuple[Path, str] | None = None
    with torch.no_grad():
        for file in files:
            with _open_safetensors(file, device) as f:
                for name in located[file]:
                    if name not in targets:  # lm_head.weight of a tied checkpoint: checked below
                        tied_lm_head = (file, name)
                        continue
                    t = targets[name]
                    module = modules[t.module]
                    loader = getattr(module, "weight_loader", default_weight_loader)
                    loader(getattr(module, t.param), f.get_tensor(name), t.shard_id)
        if tied_lm_head is not None:
            with _open_safetensors(tied_lm_head[0], device) as f:
                lm_head = f.get_tensor(tied_lm_head[1]).to(dtype)
            if not torch.equal(lm_head, model.embed_tokens.weight):
                raise ValueError(f"{tied_lm_head[0].name}: config.json sets tie_word_embeddings but lm_head.weight "
                                 f"differs from model.embed_tokens.weight; set tie_word_embeddings=false")
    process_weights_after_loading(model)
    return model, config


def hf_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under HF names, fused ones split (contiguous copies, ready for safetensors)."""
    modules = dict(model.named_modules())
    out = {}
    for name, t in weight_targets(model, get_architecture(model.config.architecture).weights).items():
        out[name] = _shard_view(modules[t.module], t.param, t.shard_id).detach().contiguous()
    return out


def _check_headers(files: list[Path], slots: dict[str, WeightTarget], config: ModelConfig,
                   mapping: WeightMapping) -> dict[Path, list[str]]:
    """Match every tensor in the headers to a slot before reading data; returns names per file."""
    located: dict[Path, list[str]] = {}
    seen: dict[str, Path] = {}
    unexpected: list[str] = []
    for file in files:
        names: list[str] = []
        with _open_safetensors(file, "cpu") as f:
            for name in f.keys():
                if mapping.is_ignored(name):
                    continue
                if name in seen:
                    raise ValueError(f"tensor {name} appears in both {seen[name].name} and {file.name}")
                seen[name] = file
                shape = tuple(f.get_slice(name).get_shape())
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    expected = (config.vocab_size, config.hidden_size)
                elif name in slots:
                    expected = slots[name].shape
                else:
                    unexpected.append(f"{name} {shape} in {file.name}")
                    continue
                if shape != expected:
                    raise ValueError(f"tensor {name} in {file.name} has shape {shape} but config.json implies "
                                     f"{expected}; the weights and config.json describe different models")
                names.append(name)
        located[file] = names
    if unexpected:
        raise ValueError(f"{len(unexpected)} unexpected tensor(s) for a {config.architecture} with this "
                         f"config.json: {_first(unexpected)}; this loader maps only Llama-family tensors")
    missing = [name for name in slots if name not in seen]
    if missing:
        hint = ("; a model that shares its embedding as LM head needs tie_word_embeddings=true in config.json"
                if "lm_head.weight" in missing else "")
        raise ValueError(f"{len(missing)} tensor(s) missing from {', '.join(p.name for p in files)}: "
                         f"{_first(missing)}{hint}")
    return located


@contextmanager
def _open_safetensors(file: Path, device: torch.device | str) -> Iterator[Any]:
    """`safe_open`, with the library's errors (a file cut short, a damaged header) turned into a
    ValueError that names the file and the fix; our own errors from the body pass unchanged."""
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            yield f
    except SafetensorError as e:
        size = file.stat().st_size if file.is_file() else 0
        raise ValueError(f"{file} ({size:,} bytes) is not a readable safetensors file: {e}; it was "
                         f"probably cut short (an interrupted download or copy) or damaged: fetch "
                         f"or write it again") from None


def _first(names: list[str], limit: int = 8) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _normalise_device(device: torch.device | str) -> torch.device:
    """safetensors wants an explicit index for CUDA ("cuda:0"), so resolve a bare "cuda"."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
