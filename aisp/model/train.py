"""Train a small Llama with the byte tokenizer on the stdlib's docs, so its weights mean something.

Contract:
- `TrainConfig` (frozen, validated at construction) holds the model's shape, the optimisation
  (AdamW, linear warm-up then cosine decay to `min_lr_ratio * lr`, decoupled weight decay on
  matrices only, gradient-norm clipping), the seed, the device and the compute dtype ("auto":
  bfloat16 on CUDA, float32 on a CPU). bfloat16 means a bfloat16 model for forward and
  backward with float32 master weights in AdamW (and in the saved file), not autocast: the
  model's RMSNorm refuses a float32 weight against the bfloat16 activations autocast makes.
  `TRAIN_PRESETS` holds `micro` (CPU, seconds: the tests) and `small` (an H200, minutes);
  `train_preset(name, **changes)` derives one.
- `train(config, out_dir)` trains on random contiguous windows of the train split
  (aisp.model.corpus; `corpus="pydoc+sources"` adds the stdlib's .py files to the train text
  only), measures the held-out loss on the whole eval split at step 0, every `eval_every` steps
  and at the end, and writes into `out_dir` an HF-layout folder that `LLMEngine` and
  transformers' `LlamaForCausalLM.from_pretrained` load (config.json, model.safetensors in
  float32, tokenizer.json, tokenizer_config.json, generation_config.json), plus `train_log.json`
  (config, parameter count, corpus sha256s, versions, every step's loss, the evals, the command
  that rebuilds it) and `loss.png` (train and eval loss against step).
- The forward is the model's own public `forward` with `WindowAttention`: each window is one
  sequence starting at position 0 with full causal attention, the way a prompt's prefill runs
  (one SDPA call for all equal-length windows, which `VarlenCausalAttention` would make one
  call per window). The model code is untouched: the module is built as the synthetic presets
  build it, then switched back to requires_grad and train mode. The loss is next-byte
  cross-entropy (nats per byte; perplexity = exp(loss), uniform = the vocabulary size).
- An existing, non-empty `out_dir` is refused unless `overwrite`; then only the files listed
  above are replaced, nothing else there is deleted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aisp.model.config import ModelConfig
from aisp.model.corpus import corpus_info, stdlib_corpus, stdlib_sources
from aisp.model.llama import LlamaForCausalLM
from aisp.model.loader import hf_state_dict
from aisp.model.presets import build_synthetic
from aisp.model.tokenizer import BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, save_byte_tokenizer

CORPORA = ("pydoc", "pydoc+sources")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
OUTPUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "generation_config.json", "train_log.json", "loss.png")


@dataclass(frozen=True)
class TrainConfig:
    """One training run; every field is also a `aisp model train` flag (`_` -> `-`)."""

    preset: str = "micro"           # the preset these values started from (for the rebuild command)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 192
    context_len: int = 64           # window length in bytes; also max_position_embeddings
    steps: int = 200
    batch_size: int = 16            # windows per step
    lr: float = 3e-3
    min_lr_ratio: float = 0.1       # cosine floor, as a fraction of lr
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    corpus: str = "pydoc"
    seed: int = 0
    device: str = "auto"            # auto: cuda if available, else cpu
    dtype: str = "auto"             # auto: bfloat16 (float32 master weights) on CUDA, float32 on a CPU

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}; head_dim = hidden_size / num_heads must be a whole number")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head_dim {self.hidden_size // self.num_heads} (hidden_size / num_heads) "
                             f"must be even for rotary embeddings; change hidden_size or num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                             f"{self.num_kv_heads} (grouped-query attention); pick a divisor")
        if not isinstance(self.context_len, int) or self.context_len < 2:
            raise ValueError(f"context_len must be an int >= 2; got {self.context_len!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must lie in [0, steps={self.steps}]")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr must be > 0 and min_lr_ratio in [0, 1]; got {self.lr}, {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"weight_decay must be >= 0 and grad_clip > 0; got {self.weight_decay}, "
                             f"{self.grad_clip}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus {self.corpus!r} unknown; choose one of {', '.join(CORPORA)}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} unknown; choose one of {', '.join(COMPUTE_DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def model_config(self) -> ModelConfig:
        """The Llama this run trains: byte vocabulary, plain RoPE, untied LM head, float32 weights."""
        return ModelConfig(
            architecture="LlamaForCausalLM", vocab_size=BYTE_VOCAB_SIZE, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim, rms_norm_eps=1e-5, rope_theta=10_000.0,
            max_position_embeddings=self.context_len, tie_word_embeddings=False,
            bos_token_id=BYTE_BOS_ID, eos_token_ids=(BYTE_EOS_ID,), pad_token_id=BYTE_PAD_ID,
            dtype="float32")


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # 131,776 parameters (ModelConfig.num_params): trains on a 2-core CPU in seconds.
    "micro": TrainConfig(),
    # 25,439,744 parameters: for one H200 in bf16, ~100 M training bytes (3000 steps x 64 x 512).
    # The pydoc train split is only 0.42 MB, so the stdlib's sources join the train text.
    "small": TrainConfig(preset="small", hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                         intermediate_size=1536, context_len=512, steps=3000, batch_size=64,
                         lr=1e-3, warmup_steps=200, eval_every=250, corpus="pydoc+sources"),
}


def train_preset(name: str, **changes: Any) -> TrainConfig:
    """The preset's config with `changes` applied (and validated); unknown names list the valid ones.

    Fewer `steps` than the preset's, without `warmup_steps`, keep the warm-up at most a tenth of
    the run (a 5-step smoke run would otherwise be refused for its 20-step warm-up)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; presets: {', '.join(TRAIN_PRESETS)}")
    base = TRAIN_PRESETS[name]
    steps = changes.get("steps")
    if isinstance(steps, int) and "warmup_steps" not in changes:
        changes = {**changes, "warmup_steps": min(base.warmup_steps, max(0, steps // 10))}
    return dataclasses.replace(base, **changes)


class WindowAttention:
    """An `AttentionBackend` for `num_windows` equal-length windows packed back to back.

    Each window is an independent sequence whose queries and keys start at position 0, so
    SDPA's top-left `is_causal=True` is exactly the causal mask (as in VarlenCausalAttention,
    which this equals; it only batches the windows into one call). Differentiable.
    """

    def __init__(self, num_windows: int, window_len: int) -> None:
        self.num_windows, self.window_len = num_windows, window_len

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                sliding_window: int | None = None) -> torch.Tensor:
        assert sliding_window is None, "the trained Llama has no sliding window"
        b, n = self.num_windows, self.window_len
        assert q.shape[0] == b * n, f"layer {layer_idx}: {q.shape[0]} tokens, expected {b} x {n}"
        # [B*L, H, D] -> [B, H, L, D]
        qs, ks, vs = (t.view(b, n, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=q.shape[-1] ** -0.5,
                                           enable_gqa=ks.shape[1] != qs.shape[1])
        return o.transpose(1, 2).reshape(q.shape)


def window_loss(model: LlamaForCausalLM, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy of windows [B, L + 1] (token ids): inputs [:, :-1], targets [:, 1:]."""
    b, n = windows.shape[0], windows.shape[1] - 1
    inputs, targets = windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)
    positions = torch.arange(n, device=windows.device).repeat(b)
    hidden = model(inputs, positions, WindowAttention(b, n))
    return F.cross_entropy(model.compute_logits(hidden), targets)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to the floor."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio * config.lr
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, context_len: int, batch_size: int) -> float:
    """Mean loss over all of `data` in disjoint windows: each byte after the first is predicted
    once, from the bytes before it in its window (windows of context_len + 1 overlap by one)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, len(data) - 1, context_len))
    full = [s for s in starts if s + context_len + 1 <= len(data)]
    for i in range(0, len(full), batch_size):
        idx = torch.tensor(full[i:i + batch_size], device=data.device)
        windows = data[idx[:, None] + torch.arange(context_len + 1, device=data.device)]
        total += window_loss(model, windows).item() * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    tail = starts[len(full):]  # the last, shorter window
    if tail:
        windows = data[tail[0]:][None]
        total += window_loss(model, windows).item() * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    model.train(was_training)
    return total / count


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    num_params: int
    steps: int
    train_seconds: float
    tokens_per_s: float
    eval_loss: float

    @property
    def eval_ppl(self) -> float:
        return math.exp(self.eval_loss)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless `overwrite` (then our files are replaced, nothing deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; pick another OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        n = sum(1 for _ in out_dir.iterdir())
        raise ValueError(f"{out_dir} exists and holds {n} entries; pass --overwrite to replace the "
                         f"checkpoint there ({', '.join(OUTPUT_FILES[:2])}, ...) or pick a new OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)


def train(config: TrainConfig, out_dir: str | Path, overwrite: bool = False,
          progress: bool = True) -> TrainResult:
    """Train, evaluate, save; see the module docstring for what lands in `out_dir`."""
    out = Path(out_dir)
    device = resolve_device(config.device)  # before the folder exists: a refused run writes nothing
    prepare_out_dir(out, overwrite)
    use_bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    train_bytes, eval_bytes = stdlib_corpus("train"), stdlib_corpus("eval")
    sources = stdlib_sources() if config.corpus == "pydoc+sources" else b""
    for name, data in (("train", train_bytes + sources), ("eval", eval_bytes)):
        if len(data) < config.context_len + 1:
            raise ValueError(f"the {name} split has {len(data):,} bytes, fewer than one window of "
                             f"context_len + 1 = {config.context_len + 1}; use a smaller --context-len")
    to_ids = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).to(device).long()  # noqa: E731
    train_ids, eval_ids = to_ids(train_bytes + sources), to_ids(eval_bytes)

    model_config = config.model_config()
    torch.manual_seed(config.seed)
    model, _ = build_synthetic(model_config, device, torch.float32, config.seed)
    model.requires_grad_(True).train()  # the synthetic builder makes inference-only modules
    # bfloat16: the model computes in bf16, AdamW updates float32 masters (same init either way).
    masters = [p.detach().clone() for p in model.parameters()] if use_bf16 else None
    if use_bf16:
        model.to(torch.bfloat16)  # the rope cache stays float32 (RotaryEmbedding._apply)
    params = list(model.parameters())
    opt_params = masters if masters is not None else params
    decay = [p for p in opt_params if p.dim() >= 2]     # matrices and the embedding
    no_decay = [p for p in opt_params if p.dim() < 2]   # norm weights
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(config.seed)
    offsets = torch.arange(config.context_len + 1, device=device)
    eval_batch = max(config.batch_size, 64)

    history: dict[str, list[float]] = {"step": [], "train_loss": [], "lr": [], "grad_norm": []}
    evals: list[dict[str, float]] = []

    def record_eval(step: int) -> float:
        loss = evaluate(model, eval_ids, config.context_len, eval_batch)
        evals.append({"step": step, "loss": loss, "ppl": math.exp(loss)})
        return loss

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    eval_loss = record_eval(0)
    train_seconds, tokens_per_step = 0.0, config.batch_size * config.context_len
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  eval {task.fields[eval]:.3f}  "
                          "{task.fields[tps]:,.0f} tok/s"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=config.steps, loss=float("nan"), eval=eval_loss, tps=0.0)
        for step in range(config.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, len(train_ids) - config.context_len, (config.batch_size,),
                                   device=device, generator=gen)
            loss = window_loss(model, train_ids[starts[:, None] + offsets])
            loss.backward()
            if masters is not None:
                for m, p in zip(masters, params):
                    m.grad = p.grad.float()
            grad_norm = torch.nn.utils.clip_grad_norm_(opt_params, config.grad_clip)
            optimizer.step()
            model.zero_grad(set_to_none=True)
            optimizer.zero_grad(set_to_none=True)
            if masters is not None:
                with torch.no_grad():
                    for m, p in zip(masters, params):
                        p.copy_(m)
            loss_value = loss.item()  # syncs, so the step's time below is real
            train_seconds += time.perf_counter() - t0
            for key, value in (("step", step + 1), ("train_loss", loss_value), ("lr", lr),
                               ("grad_norm", grad_norm.item())):
                history[key].append(value)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                eval_loss = record_eval(step + 1)
            bar.update(task, advance=1, loss=loss_value, eval=eval_loss,
                       tps=tokens_per_step * (step + 1) / train_seconds)

    from aisp.harness.provenance import git_sha  # torch-free; imported here, used once

    model.requires_grad_(False).eval()
    if masters is not None:  # save the float32 masters, not their bf16 copies
        model.float()
        with torch.no_grad():
            for m, p in zip(masters, model.parameters()):
                p.copy_(m)
    save_checkpoint(model, model_config, out)
    result = TrainResult(out, model_config.num_params(), config.steps, train_seconds,
                         tokens_per_step * config.steps / train_seconds, eval_loss)
    log = {
        "command": rebuild_command(config, out),
        "config": dataclasses.asdict(config),
        "model": {"num_params": result.num_params, "hf_config": model_config.to_hf()},
        "corpus": {"train": corpus_info(train_bytes), "eval": corpus_info(eval_bytes),
                   "sources": corpus_info(sources) if sources else None,
                   "rule": "aisp.model.corpus: pydoc topics in sorted key order, last 10% = eval"},
        "device": str(device), "compute_dtype": "bfloat16 (float32 master weights)" if use_bf16 else "float32",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "git_sha": git_sha()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": history, "evals": evals,
        "final": {"eval_loss": eval_loss, "eval_ppl": result.eval_ppl,
                  "uniform_ppl": model_config.vocab_size, "train_seconds": train_seconds,
                  "tokens_per_s": result.tokens_per_s,
                  "train_tokens_seen": tokens_per_step * config.steps},
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    plot_losses(history, evals, out / "loss.png", title=f"{config.preset}: {result.num_params:,} params")
    return result


def save_checkpoint(model: LlamaForCausalLM, model_config: ModelConfig, out: Path) -> None:
    """The HF layout `save_synthetic` writes, with these weights (float32)."""
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    generation = {"bos_token_id": model_config.bos_token_id,
                  "eos_token_id": list(model_config.eos_token_ids),
                  "pad_token_id": model_config.pad_token_id}
    for name, data in (("config.json", model_config.to_hf()), ("generation_config.json", generation)):
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    save_byte_tokenizer(out, model_max_length=model_config.max_model_len)


def plot_losses(history: dict[str, list[float]], evals: list[dict[str, float]], path: Path,
                title: str) -> None:
    """PNG of train loss (every step) and eval loss (each evaluation) against step, nats/byte."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["train_loss"], lw=0.8, alpha=0.7, label="train (batch)")
    ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="eval (held-out 10%)")
    ax.axhline(math.log(BYTE_VOCAB_SIZE), color="grey", ls=":", label=f"uniform ln {BYTE_VOCAB_SIZE}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / byte)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rebuild_command(config: TrainConfig, out_dir: Path) -> str:
    """The `aisp model train` line that repeats this run: the preset plus every changed field."""
    base = TRAIN_PRESETS.get(config.preset, TrainConfig())
    args = ["python", "-m", "cli.aisp", "model", "train", str(out_dir), "--preset", config.preset]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name != "preset" and value != getattr(base, field.name):
            args += [f"--{field.name.replace('_', '-')}", str(value)]
    return shlex.join(args)
