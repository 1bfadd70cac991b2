"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over a flattened batch of tokens.

Contract:
- `LlamaForCausalLM(config, dtype, linear_method=None)` builds the module tree;
  `LlamaForCausalLM.empty(config, device, dtype, linear_method=None)` builds it directly on
  `device` with uninitialised weights (no CPU float32 detour), for the loader and the synthetic
  presets to fill in place (`materialize(device)` is its second half, for a meta-built model).
- `forward(input_ids [T], positions [T], attn) -> hidden [T, hidden_size]`: T tokens of any
  number of sequences, flattened; `positions` gives each token's position in its own sequence;
  `attn` (an `AttentionBackend`) decides which tokens attend to which and owns any KV cache;
  each layer passes it that layer's sliding window (`ModelConfig.layer_sliding_windows`).
- `compute_logits(hidden [n, hidden_size]) -> [n, vocab_size]` in float32; callers pass only the
  rows they sample from (usually the last token of each sequence), which keeps the vocab-sized
  GEMM small.
- Layers come from aisp.model.layers: every linear through `make_linear` with the model's one
  `linear_method` (None: unquantized), so a quantized or parallel method is a constructor
  argument, not a code change here.
- `set_elementwise_kernels("torch" | "triton")` (aisp.model.layers' switch) picks, for every
  layer at once, how RMSNorm (with the residual add before it), RoPE and SiLU·mul run: "torch"
  (default) is the plain-torch math of aisp.kernels.fused_elementwise (HF's, bit for bit);
  "triton" runs the fused kernels there
  (CUDA, or the interpreter in tests; graph-capture safe). On GPUs they match the torch math
  bit for bit except RMSNorm's float32 sum of squares (another reduction order), whose rare
  one-ulp flips make 16-bit logits differ slightly between the two. Each layer carries
  (hidden, residual) the way vLLM does, so the add before each norm is fused into it; the sums
  are those of x + attn(norm(x)), x + mlp(norm(x)), in either mode.
- Parameter names (what the loader fills): embed_tokens, layers.N.input_layernorm,
  layers.N.self_attn.{qkv_proj, o_proj, q_norm, k_norm}, layers.N.post_attention_layernorm,
  layers.N.mlp.{gate_up_proj, down_proj}, norm, lm_head (absent when tied: logits then use
  embed_tokens.weight). qkv_proj rows are [q | k | v] (shards "q", "k", "v"); gate_up_proj rows
  are [gate | up] (shards "gate", "up"); each layer's `weight_loader` puts a shard in its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aisp.model.attention_backend import AttentionBackend
from aisp.model.config import ModelConfig
from aisp.model.layers import (LMHead, LinearMethod, RMSNorm, Rope, RotaryEmbedding, SiluAndMul,
                               VocabEmbedding, make_linear, set_elementwise_kernels)


class LlamaAttention(nn.Module):
    """Fused qkv projection, optional per-head q/k RMSNorm (Qwen3) and RoPE, and o_proj: the
    projections around attention. The layer calls the attention backend between them."""

    def __init__(self, config: ModelConfig, layer_idx: int, dtype: torch.dtype | None = None,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.sliding_window = config.layer_sliding_windows[layer_idx]  # None: full causal
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.qkv_proj = make_linear(config.hidden_size, [self.q_size, self.kv_size, self.kv_size],
                                    shard_ids=("q", "k", "v"), bias=config.attention_bias,
                                    dtype=dtype, method=linear_method)
        self.o_proj = make_linear(self.q_size, config.hidden_size, bias=config.o_proj_bias,
                                  dtype=dtype, method=linear_method)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)

    def project_qkv(self, hidden: torch.Tensor, rope: Rope
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [T, hidden] -> q [T, Hq, D], k and v [T, Hkv, D], q/k-normed and rotated."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # Qwen3 normalises each head before RoPE
        return (*rope(q, k), v)  # the Triton path rotates in place, inside the qkv output


class LlamaMLP(nn.Module):
    """SiLU-gated MLP with gate and up fused into one GEMM: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = make_linear(config.hidden_size, [inter, inter], shard_ids=("gate", "up"),
                                        dtype=dtype, method=linear_method)
        self.down_proj = make_linear(inter, config.hidden_size, dtype=dtype, method=linear_method)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), as a residual stream (vLLM).

    `layer(hidden, residual) -> (hidden, residual)`: the sum hidden + residual is this layer's
    input x, formed inside input_layernorm; the first layer gets residual None (its hidden is x).
    The last layer's pair goes to the final norm the same way.

    The layer is two halves around the attention call, `pre_attention` and `post_attention`:
    the dense pieces that piecewise CUDA graphs capture and regional compilation compiles
    (aisp.engine.piecewise_graphs), with attention run between them on its real metadata.
    """

    def __init__(self, config: ModelConfig, layer_idx: int, dtype: torch.dtype | None = None,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config, layer_idx, dtype, linear_method)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config, dtype, linear_method)

    def pre_attention(self, hidden: torch.Tensor, residual: torch.Tensor | None, rope: Rope
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before attention: (hidden, residual) -> (q, k, v, residual)."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        q, k, v = self.self_attn.project_qkv(hidden, rope)
        return q, k, v, residual

    def post_attention(self, attn_out: torch.Tensor, residual: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after attention: (attention output [T, Hq, D], residual) -> (hidden, residual)."""
        hidden = self.self_attn.o_proj(attn_out.reshape(attn_out.shape[0], -1))
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, rope: Rope,
                attn: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, residual = self.pre_attention(hidden, residual, rope)
        out = attn.forward(self.self_attn.layer_idx, q, k, v,
                           sliding_window=self.self_attn.sliding_window)
        return self.post_attention(out, residual)


class LlamaForCausalLM(nn.Module):
    """The whole decoder plus LM head; see the module docstring for the forward contract."""

    elementwise_kernels: str = "torch"  # what its layers run; set_elementwise_kernels sets them all

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, dtype, linear_method)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_model_len, config.rope_theta,
                                         config.rope_scaling)
        # Tied models keep one matrix: no lm_head parameter, so nothing can untie it (to_empty,
        # load_state_dict) and the checkpoint has one tensor to fill.
        self.lm_head: LMHead | None = None
        if not config.tie_word_embeddings:
            self.lm_head = LMHead(config.hidden_size, config.vocab_size, dtype)

    @classmethod
    def empty(cls, config: ModelConfig, device: torch.device | str, dtype: torch.dtype,
              linear_method: LinearMethod | None = None) -> LlamaForCausalLM:
        """Uninitialised weights allocated straight on `device` in `dtype`; the rope cache is real.

        Built on the meta device first so no init kernels run and no host copy is made; for an
        8B model on a GPU this is the difference between seconds and minutes.
        """
        with torch.device("meta"):
            model = cls(config, dtype=dtype, linear_method=linear_method)
        return model.materialize(device)

    def materialize(self, device: torch.device | str) -> LlamaForCausalLM:
        """A model built on the meta device -> uninitialised storage on `device`, rope cache real."""
        self.to_empty(device=device)
        self.rotary_emb.reset_cache()
        # Inference only: no autograd graph even if a caller forgets inference_mode.
        return self.requires_grad_(False).eval()

    def set_elementwise_kernels(self, kernels: str) -> None:
        """"torch" (the twins: today's math, any device) or "triton" (fused kernels) for every layer."""
        set_elementwise_kernels(self, kernels)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend) -> torch.Tensor:
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(f"forward takes a flattened batch: input_ids and positions 1-D and of equal "
                             f"length; got input_ids {tuple(input_ids.shape)}, positions {tuple(positions.shape)}")
        hidden = self.embed_tokens(input_ids)
        rope = self.rotary_emb.for_positions(positions)  # looked up once, applied in every layer
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, rope, attn)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden_size] -> float32 logits [n, vocab_size]: the sampler's softmax wants full precision."""
        return F.linear(hidden, self.lm_head_weight).float()

