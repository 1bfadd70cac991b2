"""Perplexity of a causal LM over one token sequence, and logit agreement between two models.

Contract:
- A model is anything with the engine model's public forward: `model(input_ids, positions, attn)
  -> hidden [T, H]` over a flattened batch and `model.compute_logits(hidden) -> [T, V]`. Each
  window is one sequence run through `VarlenCausalAttention` (causal, no KV cache), positions
  0 .. L-1. `model.config.max_model_len`, when present, bounds the window.
- Every log-probability is taken in float64 (log_softmax of the float32 logits cast up) and every
  sum is a Python float, so the totals do not depend on the model's dtype beyond its logits.
- Two window schemes, each labelled in its result (`method`):

  "hf-strided" (transformers' docs/source/en/perplexity.md): windows of `max_length` tokens whose
  starts advance by `stride`; a window scores only the tokens the previous one did not (HF sets
  their labels to -100), with the rest of the window as context. With stride < max_length every
  token but the first is scored once; with stride == max_length (no overlap) each window's first
  token is context only, as in HF's loop. PPL = exp(Σ NLL / scored tokens). (HF's page weights
  each window's *mean* loss by its label count minus one, which is exact when stride ==
  max_length and one token short per later window otherwise; we sum the per-token NLL exactly,
  which is what that weighting intends.)

      tokens      0 1 2 3 4 5 6 7 8 9        max_length 6, stride 3
      window 0   [c s s s s s]               scores 1..5 (token 0 has no context)
      window 1         [c c c s s s]         scores 6..8 with 3..5 as context
      window 2               [c c c c]       scores 9

  "lm-eval-disjoint" (lm-evaluation-harness `loglikelihood_rolling`, get_rolling_token_windows
  with context_len=1 and make_disjoint_window): the first window is [prefix] + tokens[:L-1]
  predicting tokens[:L] (prefix = BOS, else EOS, as lm-eval's HFLM); each later window predicts
  the next up to L tokens from the L tokens ending just before them, so windows do not overlap
  in what they score (every token, the first included, once) and a full window has one token of
  context; the last, short window keeps a full L-token input. Reported as token perplexity,
  word perplexity exp(Σ NLL / words), byte perplexity exp(Σ NLL / bytes) and bits per byte
  Σ NLL / (bytes · ln 2), lm-eval's `weighted_perplexity`/`bits_per_byte`; words are
  `len(re.split(r"\\s+", text))` and bytes `len(text.encode("utf-8"))` of the scored text.
  These are not comparable with HF token perplexity.
- `logit_agreement(reference, candidate, ...)` runs both models over the same windows and
  reports KL(reference || candidate) per scored token (mean and max), top-1 agreement, both
  perplexities and ΔPPL = (candidate − reference) / reference.
- Bad input is a ValueError that names the value and the limit: fewer tokens than a window
  needs, max_length beyond the model's context, stride outside 1..max_length.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from aisp.model.attention_backend import VarlenCausalAttention

STRIDED, DISJOINT = "hf-strided", "lm-eval-disjoint"
METHODS = (STRIDED, DISJOINT)
IGNORE = -100          # HF's label for "not scored"
ROW_CHUNK = 512        # log_softmax rows at a time: float64 [rows, vocab] stays bounded

Progress = Callable[[int, int], None]   # (windows done, windows in all)


@dataclass(frozen=True)
class Window:
    """One forward pass: `input_ids` [L] and, aligned with its logits, `targets` [L] (the next
    token each position predicts, IGNORE where it is not scored)."""

    input_ids: torch.Tensor
    targets: torch.Tensor

    @property
    def num_scored(self) -> int:
        return int((self.targets != IGNORE).sum())


@dataclass(frozen=True)
class PerplexityResult:
    method: str                  # STRIDED or DISJOINT
    max_length: int
    stride: int                  # == max_length for DISJOINT
    num_windows: int
    num_tokens: int              # tokens in the sequence
    num_scored_tokens: int
    total_nll: float             # nats, summed over scored tokens
    perplexity: float            # token-level
    num_words: int | None = None
    num_bytes: int | None = None
    word_perplexity: float | None = None
    byte_perplexity: float | None = None
    bits_per_byte: float | None = None

    @property
    def label(self) -> str:
        if self.method == STRIDED:
            return f"HF strided sliding window (max_length {self.max_length}, stride {self.stride})"
        return f"lm-eval disjoint rolling windows (max_length {self.max_length})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label}


@dataclass(frozen=True)
class LogitAgreement:
    method: str
    max_length: int
    stride: int
    num_scored_tokens: int
    kl_mean: float               # KL(reference || candidate), nats per scored token
    kl_max: float
    top1_agreement: float        # fraction of scored positions with the same argmax
    reference_perplexity: float
    candidate_perplexity: float
    delta_ppl: float             # (candidate - reference) / reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_context(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_model_len", None)


def _check_window(model: Any, max_length: int, stride: int) -> None:
    check_window_settings(max_length, stride)
    context = model_context(model)
    if context is not None and max_length > context:
        raise ValueError(f"max_length {max_length:,} is larger than the model's context "
                         f"({context:,} tokens); pass --max-length {context} or less")


def _check_ids(model: Any, ids: torch.Tensor) -> None:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(ids) and int(ids.max()) >= vocab:
        raise ValueError(f"token id {int(ids.max()):,} is outside the model's vocabulary "
                         f"({vocab:,} ids); tokenize with the model's own tokenizer")


def check_window_settings(max_length: int, stride: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1 token, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length:,}), got "
                         f"{stride:,}; a stride above max_length would skip tokens")


def _as_tensor(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    return t.cpu()


def strided_windows(ids: Sequence[int] | torch.Tensor, max_length: int,
                    stride: int) -> list[Window]:
    """HF's strided windows (see the module docstring)."""
    ids = _as_tensor(ids)
    n = len(ids)
    if n < 2:
        raise ValueError(f"the text has {n} token(s); strided perplexity needs at least 2 "
                         f"(the first token is only context)")
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        inp = ids[begin:end]
        # logits at window position i predict absolute token begin + i + 1
        nxt = torch.full((end - begin,), IGNORE, dtype=torch.long)
        nxt[:-1] = ids[begin + 1:end]
        absolute = torch.arange(begin + 1, end + 1)
        nxt[absolute < max(prev_end, 1)] = IGNORE     # scored by an earlier window
        windows.append(Window(inp, nxt))
        prev_end = end
        if end == n:
            break
    return windows


def disjoint_windows(ids: Sequence[int] | torch.Tensor, max_length: int,
                     prefix_token_id: int) -> list[Window]:
    """lm-eval's rolling, disjoint windows (see the module docstring)."""
    ids = _as_tensor(ids)
    n, L = len(ids), max_length
    if n < 1:
        raise ValueError("the text has no tokens; disjoint perplexity needs at least 1")
    first = min(L, n)
    windows = [Window(torch.cat([torch.tensor([prefix_token_id]), ids[:first - 1]]),
                      ids[:first].clone())]
    predicted = first
    while predicted < n:
        pred_len = min(n - predicted, L)
        end = predicted + pred_len
        inp = ids[end - L - 1:end - 1]
        targets = ids[end - L:end].clone()
        targets[:L - pred_len] = IGNORE
        windows.append(Window(inp, targets))
        predicted = end
    return windows


def make_windows(ids: Sequence[int] | torch.Tensor, method: str, max_length: int,
                 stride: int | None = None, prefix_token_id: int | None = None) -> list[Window]:
    check_window_settings(max_length, max_length if method == DISJOINT else stride or max_length)
    if method == STRIDED:
        return strided_windows(ids, max_length, stride or max_length)
    if method == DISJOINT:
        if prefix_token_id is None:
            raise ValueError("disjoint windows need a prefix token (the tokenizer's BOS or EOS)")
        return disjoint_windows(ids, max_length, prefix_token_id)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


@torch.inference_mode()
def window_logprobs(model: Any, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 log-probabilities [scored, vocab], targets [scored]) on the model's device.

    The log-softmax runs ROW_CHUNK rows at a time, but the window's result is held whole:
    scored × vocab × 8 bytes (2,048 tokens at a 128k vocab: 2 GiB)."""
    device = _model_device(model)
    ids = window.input_ids.to(device)
    positions = torch.arange(len(ids), device=device)
    hidden = model(ids, positions, VarlenCausalAttention.from_seq_lens([len(ids)]))
    rows = (window.targets != IGNORE).nonzero().flatten().to(device)
    logits = model.compute_logits(hidden[rows])
    logprobs = torch.cat([logits[i:i + ROW_CHUNK].double().log_softmax(-1)
                          for i in range(0, len(rows), ROW_CHUNK)]) if len(rows) else \
        logits.double()
    return logprobs, window.targets[window.targets != IGNORE].to(device)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _nll(logprobs: torch.Tensor, targets: torch.Tensor) -> float:
    return -float(logprobs.gather(1, targets[:, None]).sum())


def count_words(text: str) -> int:
    """lm-eval's word count (preprocess_wikitext.py): len(re.split(r"\\s+", text))."""
    return len(re.split(r"\s+", text))


def perplexity(model: Any, ids: Sequence[int] | torch.Tensor, method: str, max_length: int,
               stride: int | None = None, prefix_token_id: int | None = None,
               num_words: int | None = None, num_bytes: int | None = None,
               progress: Progress | None = None) -> PerplexityResult:
    """Perplexity of `model` on token ids `ids` by `method` (see the module docstring).

    `num_words`/`num_bytes` (of the text `ids` came from) add word and byte perplexity and
    bits per byte to a DISJOINT result; a STRIDED result leaves them None (its first token is
    not scored, so they would not be lm-eval's numbers).
    """
    stride = max_length if method == DISJOINT or stride is None else stride
    _check_window(model, max_length, stride)
    _check_ids(model, _as_tensor(ids))
    windows = make_windows(ids, method, max_length, stride, prefix_token_id)
    total, scored = 0.0, 0
    for i, w in enumerate(windows):
        lp, tg = window_logprobs(model, w)
        total += _nll(lp, tg)
        scored += len(tg)
        if progress:
            progress(i + 1, len(windows))
    extra: dict[str, Any] = {}
    if method == DISJOINT:
        if num_words is not None:
            extra.update(num_words=num_words, word_perplexity=_exp(total / max(num_words, 1)))
        if num_bytes is not None:
            extra.update(num_bytes=num_bytes, byte_perplexity=_exp(total / max(num_bytes, 1)),
                         bits_per_byte=total / (max(num_bytes, 1) * math.log(2)))
    return PerplexityResult(method=method, max_length=max_length, stride=stride,
                            num_windows=len(windows), num_tokens=len(_as_tensor(ids)),
                            num_scored_tokens=scored, total_nll=total,
                            perplexity=_exp(total / scored), **extra)


def _exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


def logit_agreement(reference: Any, candidate: Any, ids: Sequence[int] | torch.Tensor,
                    method: str = DISJOINT, max_length: int = 512, stride: int | None = None,
                    prefix_token_id: int | None = None,
                    progress: Progress | None = None) -> LogitAgreement:
    """Both models over the same windows: KL(reference || candidate), top-1, ΔPPL."""
    stride = max_length if method == DISJOINT or stride is None else stride
    for m in (reference, candidate):
        _check_window(m, max_length, stride)
        _check_ids(m, _as_tensor(ids))
    windows = make_windows(ids, method, max_length, stride, prefix_token_id)
    acc = AgreementSums()
    for i, w in enumerate(windows):
        ref_lp, tg = window_logprobs(reference, w)
        cand_lp, _ = window_logprobs(candidate, w)
        acc.add(ref_lp, cand_lp.to(ref_lp.device), tg)
        if progress:
            progress(i + 1, len(windows))
    return acc.result(method, max_length, stride)


class AgreementSums:
    """Running float64 sums behind a `LogitAgreement`, fed one window at a time."""

    def __init__(self) -> None:
        self.kl = self.kl_max = self.ref_nll = self.cand_nll = 0.0
        self.same_top1 = self.tokens = 0

    def add(self, ref_lp: torch.Tensor, cand_lp: torch.Tensor, targets: torch.Tensor) -> None:
        ref_lp, cand_lp = ref_lp.double(), cand_lp.double()
        # KL(p || q) = Σ p (log p − log q); p = 0 terms contribute 0 (exp(-inf) * finite).
        kl = (ref_lp.exp() * (ref_lp - cand_lp)).nan_to_num(nan=0.0).sum(-1)
        self.kl += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max())) if len(kl) else self.kl_max
        self.same_top1 += int((ref_lp.argmax(-1) == cand_lp.argmax(-1)).sum())
        self.ref_nll += _nll(ref_lp, targets)
        self.cand_nll += _nll(cand_lp, targets)
        self.tokens += len(targets)

    def result(self, method: str, max_length: int, stride: int) -> LogitAgreement:
        if self.tokens == 0:
            raise ValueError("no scored tokens to compare")
        ref_ppl, cand_ppl = _exp(self.ref_nll / self.tokens), _exp(self.cand_nll / self.tokens)
        return LogitAgreement(method=method, max_length=max_length, stride=stride,
                              num_scored_tokens=self.tokens, kl_mean=self.kl / self.tokens,
                              kl_max=self.kl_max, top1_agreement=self.same_top1 / self.tokens,
                              reference_perplexity=ref_ppl, candidate_perplexity=cand_ppl,
                              delta_ppl=(cand_ppl - ref_ppl) / ref_ppl)


def text_tokens(tokenizer: Any, text: str, method: str) -> tuple[list[int], int | None]:
    """(ids, prefix token) for `method`: HF tokenizes with the tokenizer's own template (a
    leading BOS where it adds one; that token is only context); lm-eval scores the bare text
    after a prefix token (BOS, else the first EOS)."""
    if not text.strip():
        raise ValueError("the text is empty (or only whitespace); give a file with some text")
    if method == STRIDED:
        return tokenizer.encode(text), None
    prefix = tokenizer.bos_token_id
    if prefix is None and tokenizer.eos_token_ids:
        prefix = tokenizer.eos_token_ids[0]
    if prefix is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start the first "
                         "window with")
    return tokenizer.encode(text, add_special_tokens=False), prefix


def text_perplexity(model: Any, tokenizer: Any, text: str, method: str, max_length: int,
                    stride: int | None = None,
                    progress: Progress | None = None) -> PerplexityResult:
    """`perplexity` of `text` tokenized for `method`; DISJOINT adds word/byte numbers."""
    ids, prefix = text_tokens(tokenizer, text, method)
    return perplexity(model, ids, method, max_length, stride, prefix_token_id=prefix,
                      num_words=count_words(text), num_bytes=len(text.encode("utf-8")),
                      progress=progress)
