"""Model configuration: one frozen `ModelConfig` for the Llama family, parsed from an HF config.json.

Contract:
- `ModelConfig.from_hf(d)` accepts the config.json dict of LlamaForCausalLM, MistralForCausalLM,
  Qwen2ForCausalLM or Qwen3ForCausalLM in either rope layout: Hub checkpoints carry top-level
  `rope_theta` + `rope_scaling`, transformers 5 writes one `rope_parameters` dict. Both parse to
  the same `ModelConfig`; when both are present they must agree.
- Keys that would change the math and that this stack does not implement (another activation,
  MLP bias, partial rotary, a rope type other than default/llama3) are errors, never ignored.
  Other HF keys (use_cache, initializer_range, ...) do not affect inference and are skipped.
- Sliding-window attention is per layer, read as transformers reads each family (see
  `_parse_sliding_window`): Mistral windows every layer when `sliding_window` is set; Qwen2/Qwen3
  window the layers whose `layer_types` entry is "sliding_attention" (derived, when absent, from
  `use_sliding_window` and `max_window_layers`); Llama has no window. A combination transformers
  itself cannot run or that this stack would have to guess at is a ValueError naming the field.
- `to_hf()` writes a dict that transformers 5 loads (and that `from_hf` reads back equal).
- Every field is validated at construction; derive a changed config with `dataclasses.replace`.
- `read_json_file(path, what)` reads the JSON files of a model folder: one that is not a JSON
  object is a ValueError naming the file and the problem (json's own message names neither).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
ROPE_TYPES = ("default", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")  # HF's names for a layer's attention
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1-style frequency scaling: long wavelengths divided by `factor`, a smooth ramp between.

    Only the `llama3` type exists here; plain RoPE is `ModelConfig.rope_scaling = None`.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ValueError(f"RopeScaling.rope_type is {self.rope_type!r}; only 'llama3' scales frequencies")
        if self.factor <= 0 or self.low_freq_factor <= 0 or self.original_max_position_embeddings <= 0:
            raise ValueError(f"llama3 rope scaling needs positive factor, low_freq_factor and "
                             f"original_max_position_embeddings; got {self}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"llama3 rope scaling needs high_freq_factor > low_freq_factor; got "
                             f"high_freq_factor={self.high_freq_factor}, low_freq_factor={self.low_freq_factor}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to run; names follow HF's config.json.

    `attention_bias` means q/k/v projections carry a bias (Qwen2 always; Llama/Qwen3 when the
    config says so); `o_proj_bias` is separate because Qwen2 biases q/k/v but not o, while Llama's
    `attention_bias` covers all four.

    `sliding_window` (tokens, HF's meaning: a query at position p sees keys p - window < j <= p)
    applies to the layers `layer_sliding_windows` names: with `layer_types` None, every layer
    when `sliding_window` is set (Mistral); otherwise the layers whose entry is
    "sliding_attention" (Qwen2/Qwen3). `from_hf` writes layer_types only when the layers differ,
    and drops a window no layer uses, so equal models compare equal.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_proj_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    dtype: str = "bfloat16"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings; got {self.head_dim}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(f"rms_norm_eps and rope_theta must be positive; got "
                             f"{self.rms_norm_eps} and {self.rope_theta}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported; supported: {', '.join(DTYPES)}")
        if self.qk_norm and self.model_type != "qwen3":
            raise ValueError(f"qk_norm is a Qwen3 feature; {self.architecture} does not have it")
        for tid in (self.bos_token_id, self.pad_token_id, *self.eos_token_ids):
            if tid is not None and not 0 <= tid < self.vocab_size:
                raise ValueError(f"special token id {tid} is outside the vocabulary [0, {self.vocab_size}); "
                                 f"fix bos/eos/pad_token_id in config.json")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                                or self.sliding_window <= 0):
            raise ValueError(f"sliding_window must be a positive int or None; got {self.sliding_window!r}")
        if self.sliding_window is not None and self.model_type == "llama":
            raise ValueError(f"sliding_window={self.sliding_window}: {self.architecture} has no sliding-"
                             f"window attention in transformers; use MistralForCausalLM or drop it")
        if self.layer_types is not None:
            if self.model_type not in ("qwen2", "qwen3"):
                raise ValueError(f"layer_types is per-layer attention of Qwen2/Qwen3; {self.architecture} "
                                 f"applies sliding_window to every layer, so leave layer_types None")
            if len(self.layer_types) != self.num_hidden_layers or any(
                    t not in LAYER_TYPES for t in self.layer_types):
                raise ValueError(f"layer_types must hold num_hidden_layers={self.num_hidden_layers} "
                                 f"entries among {LAYER_TYPES}; got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types names sliding_attention layers but sliding_window is None "
                                 "(for Qwen2/Qwen3: use_sliding_window is false); set both or neither")

    # ---- derived ---------------------------------------------------------------------------------

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def max_model_len(self) -> int:
        """Longest sequence this stack runs: every position the model has (windows included:
        the attention kernels mask keys older than a layer's window)."""
        return self.max_position_embeddings

    @property
    def layer_sliding_windows(self) -> tuple[int | None, ...]:
        """Per decoder layer, its attention window in tokens, or None for full causal attention."""
        if self.layer_types is None:
            return (self.sliding_window,) * self.num_hidden_layers
        return tuple(self.sliding_window if t == "sliding_attention" else None for t in self.layer_types)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once); feeds FLOP and byte estimates."""
        h, layers = self.hidden_size, self.num_hidden_layers
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        if self.o_proj_bias:
            attn += h
        if self.qk_norm:
            attn += 2 * self.head_dim
        per_layer = attn + 3 * h * self.intermediate_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return layers * per_layer + embed + h

    # ---- HF I/O ----------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a config.json file, or the config.json inside a model folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}; pass an HF model folder or its config.json")
        d = read_json_file(path, "an HF config.json")
        return cls.from_hf(d)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        """Parse an HF config.json dict (either rope layout). See the module docstring for the rules."""
        archs = d.get("architectures") or []
        if not archs:  # configs saved without a model class still name their model_type
            archs = [a for a, t in ARCHITECTURES.items() if t == d.get("model_type")]
        arch = archs[0] if len(archs) == 1 else None
        if arch not in ARCHITECTURES:
            raise ValueError(f"config.json architectures={archs!r} (model_type={d.get('model_type')!r}) is not "
                             f"supported; supported: {', '.join(ARCHITECTURES)} (exactly one)")
        model_type = ARCHITECTURES[arch]
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        absent = [k for k in required if d.get(k) is None]
        if absent:
            raise ValueError(f"config.json lacks {', '.join(absent)}, which a {arch} needs")
        _reject_unsupported(d)
        heads = int(d["num_attention_heads"])
        kv_heads = d.get("num_key_value_heads")
        rope_theta, rope_scaling = _parse_rope(d)
        if model_type == "qwen2":
            attention_bias, o_proj_bias = True, False  # hard-wired in Qwen2's attention, not a config key
        elif model_type == "mistral":
            attention_bias = o_proj_bias = False
        else:
            attention_bias = o_proj_bias = bool(d.get("attention_bias", False))
        sliding, layer_types = _parse_sliding_window(d, model_type, int(d["num_hidden_layers"]))
        pad = d.get("pad_token_id")
        if pad is not None and pad < 0:
            pad = None  # old Llama conversions write -1 for "no pad token"
        eos = d.get("eos_token_id")
        eos_ids = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        dtype = d.get("dtype") or d.get("torch_dtype") or "bfloat16"
        return cls(
            architecture=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_proj_bias=o_proj_bias,
            qk_norm=model_type == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=pad,
            dtype=str(dtype).removeprefix("torch."),
            sliding_window=sliding,
            layer_types=layer_types,
        )

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict in transformers 5's layout (`rope_parameters`).

        `rope_theta` (and `rope_scaling` when set) are written at top level too, so transformers 4
        readers, which ignore `rope_parameters`, see the same rope; transformers 5 merges them.
        """
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta,
                    **{k: getattr(self.rope_scaling, k) for k in _LLAMA3_KEYS}}
        eos: int | list[int] | None = None
        if len(self.eos_token_ids) == 1:
            eos = self.eos_token_ids[0]
        elif self.eos_token_ids:
            eos = list(self.eos_token_ids)
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "dtype": self.dtype,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(rope)
        if self.model_type in ("llama", "qwen3"):
            d["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            d["mlp_bias"] = False
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = self.sliding_window is not None
            d["sliding_window"] = self.sliding_window
            d["max_window_layers"] = 0  # unused: layer_types says which layers are windowed
            d["layer_types"] = ["sliding_attention" if w is not None else "full_attention"
                                for w in self.layer_sliding_windows]
        return d

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied and re-validated (configs are derived, never mutated)."""
        return dataclasses.replace(self, **changes)


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; a file that is not one is a ValueError naming the file, the
    problem and the fix (json's own message names neither the file nor what to do)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); it should be "
                         f"{what}: the file may be damaged, fetch or write it again") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); "
                         f"it should be {what}: the file may be damaged or cut short, fetch or "
                         f"write it again") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object; it should be "
                         f"{what}")
    return d


def _reject_unsupported(d: dict[str, Any]) -> None:
    """Fail on config keys that change the math in ways this stack does not implement."""
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported; the gated MLP here implements 'silu' only")
    if d.get("mlp_bias", False):
        raise ValueError("mlp_bias=true is not supported; the MLP projections here have no bias")
    for src in (d, d.get("rope_parameters") or {}, d.get("rope_scaling") or {}):
        if src.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"partial_rotary_factor={src['partial_rotary_factor']} is not supported; "
                             f"rotary embedding here covers the full head_dim")


def _parse_sliding_window(d: dict[str, Any], model_type: str, num_layers: int
                          ) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) as transformers 5.x applies them (its configuration_*.py and
    modeling_*.py for each family), canonical: no window when no layer uses one, layer_types
    only when layers differ.

    - Llama: LlamaConfig has no window; a `sliding_window` key is not read by HF, so not here.
    - Mistral: `sliding_window` (default 4096) masks every layer (MistralModel builds one
      sliding mask for all layers). HF's Mistral warns about and ignores `layer_types`; a
      checkpoint that carries non-uniform layer_types was meant for another model
      (Ministral), so rather than guess it is an error.
    - Qwen2/Qwen3: the window is `sliding_window` (default 4096) only if `use_sliding_window`;
      `layer_types` as given, else "sliding_attention" for layers >= `max_window_layers`
      (default 28) when windowed.
    """
    if model_type == "llama":
        return None, None
    window = d.get("sliding_window", 4096)  # MistralConfig / Qwen2Config / Qwen3Config default
    if model_type == "mistral":
        given = d.get("layer_types")
        uniform = "full_attention" if window is None else "sliding_attention"
        if given is not None and any(t != uniform for t in given):
            raise ValueError(f"layer_types={given!r} in a MistralForCausalLM config: transformers' "
                             f"Mistral ignores layer_types and applies sliding_window={window} to every "
                             f"layer, so the checkpoint's intent is unclear; drop layer_types (every "
                             f"layer windowed) or use a model class that has per-layer windows")
        return (None if window is None else int(window)), None
    if not d.get("use_sliding_window", False):
        window = None
    types = d.get("layer_types")
    if types is None:
        max_window_layers = int(d.get("max_window_layers", 28))
        types = ["sliding_attention" if window is not None and i >= max_window_layers
                 else "full_attention" for i in range(num_layers)]
    types = tuple(types)
    if len(types) != num_layers or any(t not in LAYER_TYPES for t in types):
        raise ValueError(f"layer_types must hold num_hidden_layers={num_layers} entries among "
                         f"{LAYER_TYPES}; got {list(types)!r}")
    if "sliding_attention" in types and window is None:
        windowed = [i for i, t in enumerate(types) if t == "sliding_attention"]
        raise ValueError(f"layer_types marks layers {windowed} sliding_attention but the window is "
                         f"off (use_sliding_window={d.get('use_sliding_window', False)}, "
                         f"sliding_window={d.get('sliding_window')}); transformers cannot build that "
                         f"mask either: set use_sliding_window and sliding_window, or mark those "
                         f"layers full_attention")
    if "sliding_attention" not in types:
        return None, None  # no layer is windowed
    if all(t == "sliding_attention" for t in types):
        return int(window), None
    return int(window), types


def _parse_rope(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Read rope theta and scaling from either layout; if both layouts are present they must agree."""
    layouts: list[tuple[str, dict[str, Any]]] = []
    if d.get("rope_parameters") is not None:
        layouts.append(("rope_parameters", dict(d["rope_parameters"])))
    if d.get("rope_scaling") is not None or "rope_theta" in d:
        legacy = dict(d.get("rope_scaling") or {})
        if "rope_theta" in d:
            legacy["rope_theta"] = d["rope_theta"]
        layouts.append(("rope_theta/rope_scaling", legacy))
    if not layouts:
        return 10_000.0, None  # transformers' default_theta, and no scaling
    fallback_len = int(d.get("max_position_embeddings", 2048))
    parsed = [(where, _parse_rope_dict(where, p, layouts, fallback_len)) for where, p in layouts]
    if len(parsed) == 2 and parsed[0][1] != parsed[1][1]:
        raise ValueError(f"config.json has both rope layouts and they disagree: rope_parameters gives "
                         f"{parsed[0][1]}, rope_theta/rope_scaling gives {parsed[1][1]}; keep one")
    return parsed[0][1]


def _parse_rope_dict(where: str, p: dict[str, Any], layouts: list[tuple[str, dict[str, Any]]],
                     fallback_len: int) -> tuple[float, RopeScaling | None]:
    theta = p.get("rope_theta")
    if theta is None:  # a scaling-only dict may rely on the other layout's theta
        theta = next((q["rope_theta"] for _, q in layouts if "rope_theta" in q), 10_000.0)
    rope_type = p.get("rope_type", p.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return float(theta), None
    p.setdefault("original_max_position_embeddings", fallback_len)  # transformers' fallback too
    missing = [k for k in _LLAMA3_KEYS if k not in p]
    if missing:
        raise ValueError(f"{where}: llama3 rope scaling is missing {', '.join(missing)}")
    return float(theta), RopeScaling(
        factor=float(p["factor"]),
        low_freq_factor=float(p["low_freq_factor"]),
        high_freq_factor=float(p["high_freq_factor"]),
        original_max_position_embeddings=int(p["original_max_position_embeddings"]),
    )
