"""What a decoder forward really reads and computes: the floors a roofline fraction divides by.

A decode step reads every weight of the layers and the LM head once, but only the embedding
rows of its input tokens; counting the whole embedding table (1.05 GB of the 8B preset's
16.06 GB) makes the floor too high and the fraction too flattering. Likewise "2 x params FLOPs
per token" counts the embedding lookup as a matmul and runs the vocabulary-sized LM head for
every token, where the engine computes logits only for the tokens it samples from.

Counted here, from the model's own modules (so a new family or a tied head is handled by what
the model holds, not by its name):

- bytes of one step = layer weights (linears, norms) + LM head + one embedding row per input
  token (when the head is tied to the embedding, the head's read already covers the table)
  + the KV history the attention reads;
- FLOPs = 2 x (layer linear params) per input token + 2 x (LM head params) per sampled token
  + 4 x head_dim x num_q_heads x num_layers per (query, key) pair attended (QK^T and PV).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from aisp.model.linear import Linear


@dataclass(frozen=True)
class DecoderCost:
    layer_weight_bytes: int       # every parameter outside the embedding table and LM head
    lm_head_bytes: int            # the vocab x hidden matrix the logits read
    embed_row_bytes: int          # one embedding row (hidden_size elements)
    head_is_embedding: bool       # tied: the LM head read covers every embedding row
    layer_linear_params: int      # weights of the layers' matmuls (QKV, O, gate/up, down)
    lm_head_params: int
    attention_flops_per_pair: int  # QK^T + PV over all q heads and layers, per (query, key) pair
    kv_bytes_per_token: int       # K and V of one token over all layers

    @classmethod
    def of(cls, model: nn.Module, kv_bytes_per_token: int) -> "DecoderCost":
        """Count a LlamaForCausalLM-shaped model: `embed_tokens`, `layers`, `lm_head_weight`."""
        cfg = model.config
        embed = model.embed_tokens.weight
        head = model.lm_head_weight
        tied = head is embed
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        head_bytes = head.numel() * head.element_size()
        embed_bytes = embed.numel() * embed.element_size()
        layer_bytes = total - head_bytes - (0 if tied else embed_bytes)
        linear_params = sum(m.weight.numel() for m in model.layers.modules()
                            if isinstance(m, Linear))
        return cls(layer_weight_bytes=layer_bytes, lm_head_bytes=head_bytes,
                   embed_row_bytes=embed.shape[1] * embed.element_size(),
                   head_is_embedding=tied, layer_linear_params=linear_params,
                   lm_head_params=head.numel(),
                   attention_flops_per_pair=4 * cfg.head_dim * cfg.num_attention_heads
                   * cfg.num_hidden_layers,
                   kv_bytes_per_token=kv_bytes_per_token)

    def step_bytes(self, num_tokens: int, kv_tokens_read: int) -> int:
        """Bytes one forward of `num_tokens` input tokens reads, KV history included."""
        embed = 0 if self.head_is_embedding else num_tokens * self.embed_row_bytes
        return (self.layer_weight_bytes + self.lm_head_bytes + embed
                + kv_tokens_read * self.kv_bytes_per_token)

    def flops(self, num_tokens: int, num_logits: int, attended_pairs: int) -> int:
        """Matmul FLOPs: the layers for every token, the head for sampled ones, attention pairs."""
        return (2 * self.layer_linear_params * num_tokens + 2 * self.lm_head_params * num_logits
                + self.attention_flops_per_pair * attended_pairs)


def causal_pairs(num_cached: int, num_new: int) -> int:
    """(query, key) pairs of `num_new` queries after `num_cached` keys, causal: query i sees
    num_cached + i + 1 keys."""
    return num_new * num_cached + num_new * (num_new + 1) // 2
