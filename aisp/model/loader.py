"""Load an HF-layout Llama-family folder (config.json + safetensors) into `LlamaForCausalLM`.

Contract:
- `load_model(path, device, dtype) -> (model, config)` reads `model.safetensors`, or the shards
  listed in `model.safetensors.index.json`, with `safetensors` only (weights are never unpickled;
  a folder with only `pytorch_model.bin` is refused with the fix).
- Every HF tensor name maps to one slot of one of our parameters (`weight_slots`): q/k/v rows go
  into the fused `qkv_proj`, gate/up rows into `gate_up_proj`. Before any data is read, the
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

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from aisp.model.config import ModelConfig, read_json_file
from aisp.model.llama import LlamaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Old Llama checkpoints saved this derived buffer; it is recomputed from config.json, so skipping
# it loses nothing (any other unknown name is an error).
_DERIVED_BUFFER = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


@dataclass(frozen=True)
class WeightSlot:
    """One HF tensor's place in our model: rows [row_start, row_start + shape[0]) of `param`."""

    hf_name: str
    param: str
    row_start: int
    shape: tuple[int, ...]


def weight_slots(config: ModelConfig) -> list[WeightSlot]:
    """Every tensor an HF checkpoint of `config` holds, and where each goes (lm_head only if untied)."""
    h, inter, qs, kvs, d = (config.hidden_size, config.intermediate_size, config.q_size,
                            config.kv_size, config.head_dim)
    slots = [WeightSlot("model.embed_tokens.weight", "embed_tokens.weight", 0, (config.vocab_size, h)),
             WeightSlot("model.norm.weight", "norm.weight", 0, (h,))]
    if not config.tie_word_embeddings:
        slots.append(WeightSlot("lm_head.weight", "lm_head.weight", 0, (config.vocab_size, h)))
    for i in range(config.num_hidden_layers):
        hf, our = f"model.layers.{i}.", f"layers.{i}."
        qkv = [("q_proj", 0, qs), ("k_proj", qs, kvs), ("v_proj", qs + kvs, kvs)]
        for name, start, rows in qkv:
            slots.append(WeightSlot(f"{hf}self_attn.{name}.weight", f"{our}self_attn.qkv_proj.weight", start, (rows, h)))
            if config.attention_bias:
                slots.append(WeightSlot(f"{hf}self_attn.{name}.bias", f"{our}self_attn.qkv_proj.bias", start, (rows,)))
        slots.append(WeightSlot(f"{hf}self_attn.o_proj.weight", f"{our}self_attn.o_proj.weight", 0, (h, qs)))
        if config.o_proj_bias:
            slots.append(WeightSlot(f"{hf}self_attn.o_proj.bias", f"{our}self_attn.o_proj.bias", 0, (h,)))
        if config.qk_norm:
            for name in ("q_norm", "k_norm"):
                slots.append(WeightSlot(f"{hf}self_attn.{name}.weight", f"{our}self_attn.{name}.weight", 0, (d,)))
        slots += [
            WeightSlot(f"{hf}mlp.gate_proj.weight", f"{our}mlp.gate_up_proj.weight", 0, (inter, h)),
            WeightSlot(f"{hf}mlp.up_proj.weight", f"{our}mlp.gate_up_proj.weight", inter, (inter, h)),
            WeightSlot(f"{hf}mlp.down_proj.weight", f"{our}mlp.down_proj.weight", 0, (h, inter)),
            WeightSlot(f"{hf}input_layernorm.weight", f"{our}input_layernorm.weight", 0, (h,)),
            WeightSlot(f"{hf}post_attention_layernorm.weight", f"{our}post_attention_layernorm.weight", 0, (h,)),
        ]
    return slots


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


def load_model(path: str | Path, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model for `path`'s config.json on `device` in `dtype` (default: the config's) and fill it."""
    config = ModelConfig.from_file(Path(path) / "config.json")
    dtype = dtype or config.torch_dtype
    device = _normalise_device(device)
    files = checkpoint_files(path)
    slots = {s.hf_name: s for s in weight_slots(config)}
    located = _check_headers(files, slots, config)
    model = LlamaForCausalLM.empty(config, device, dtype)
    params = dict(model.named_parameters())
    tied_lm_head: tuple[Path, str] | None = None
    with torch.no_grad():
        for file in files:
            with _open_safetensors(file, device) as f:
                for name in located[file]:
                    if name not in slots:  # lm_head.weight of a tied checkpoint: checked below
                        tied_lm_head = (file, name)
                        continue
                    s = slots[name]
                    params[s.param][s.row_start:s.row_start + s.shape[0]].copy_(f.get_tensor(name))
        if tied_lm_head is not None:
            with _open_safetensors(tied_lm_head[0], device) as f:
                lm_head = f.get_tensor(tied_lm_head[1]).to(dtype)
            if not torch.equal(lm_head, model.embed_tokens.weight):
                raise ValueError(f"{tied_lm_head[0].name}: config.json sets tie_word_embeddings but lm_head.weight "
                                 f"differs from model.embed_tokens.weight; set tie_word_embeddings=false")
    return model, config


def hf_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under HF names, fused ones split (contiguous copies, ready for safetensors)."""
    params = dict(model.named_parameters())
    return {s.hf_name: params[s.param][s.row_start:s.row_start + s.shape[0]].detach().contiguous()
            for s in weight_slots(model.config)}


def _check_headers(files: list[Path], slots: dict[str, WeightSlot],
                   config: ModelConfig) -> dict[Path, list[str]]:
    """Match every tensor in the headers to a slot before reading data; returns names per file."""
    located: dict[Path, list[str]] = {}
    seen: dict[str, Path] = {}
    unexpected: list[str] = []
    for file in files:
        names: list[str] = []
        with _open_safetensors(file, "cpu") as f:
            for name in f.keys():
                if _DERIVED_BUFFER.fullmatch(name):
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
