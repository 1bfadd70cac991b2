"""Models with logits known in closed form, behind the engine model's public forward."""

from types import SimpleNamespace

import torch
from torch import nn


class TableLM(nn.Module):
    """Bigram LM: the logits at a position are `table[token at that position]` (no other
    context), so every scored token's NLL is -log_softmax(table[previous token])[token]."""

    def __init__(self, table: torch.Tensor, max_model_len: int = 64):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(max_model_len=max_model_len, vocab_size=table.shape[1])

    def forward(self, input_ids, positions, attn):
        assert attn.num_tokens == len(input_ids)
        return input_ids[:, None].float()

    def compute_logits(self, hidden):
        return self.table[hidden[:, 0].long()].float()


def uniform_lm(vocab: int, max_model_len: int = 64) -> TableLM:
    return TableLM(torch.zeros(vocab, vocab), max_model_len)


def bigram_lm(vocab: int, seed: int = 0, max_model_len: int = 64) -> TableLM:
    return TableLM(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3,
                   max_model_len)
