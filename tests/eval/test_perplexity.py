"""Perplexity against closed forms and against direct transcriptions of HF's and lm-eval's loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from aisp.eval.perplexity import (DISJOINT, IGNORE, STRIDED, count_words, disjoint_windows,
                                  logit_agreement, perplexity, strided_windows, text_perplexity)
from aisp.model import VarlenCausalAttention, build_synthetic, byte_tokenizer

from .fakes import bigram_lm, uniform_lm


@pytest.mark.parametrize("method,stride", [(STRIDED, 5), (STRIDED, 8), (DISJOINT, None)])
def test_uniform_logits_give_the_vocab_size(method, stride):
    ids = torch.randint(0, 37, (50,), generator=torch.Generator().manual_seed(1))
    r = perplexity(uniform_lm(37), ids, method, max_length=8, stride=stride, prefix_token_id=0)
    assert r.perplexity == pytest.approx(37, rel=1e-12)
    windows = -(-50 // 8)
    assert r.num_scored_tokens == {5: 49, 8: 50 - windows, None: 50}[stride]


def _bigram_nll(table, ids, scored):
    """Σ over scored positions t of -log p(ids[t] | ids[t-1]) (ids[-1] is the prefix)."""
    lp = table.double().log_softmax(-1)
    return -sum(float(lp[ids[t - 1], ids[t]]) for t in scored)


@pytest.mark.parametrize("max_length,stride", [(6, 3), (6, 6), (7, 2), (64, 64)])
def test_bigram_matches_closed_form_in_both_modes(max_length, stride):
    model = bigram_lm(11)
    ids = torch.randint(0, 11, (41,), generator=torch.Generator().manual_seed(2)).tolist()
    s = perplexity(model, ids, STRIDED, max_length, stride)
    # stride < max_length: tokens 1..n-1; no overlap: all but each window's first token
    scored = [t for t in range(1, 41) if stride < max_length or t % max_length]
    assert s.num_scored_tokens == len(scored)
    assert s.total_nll == pytest.approx(_bigram_nll(model.table, ids, scored), rel=1e-12)
    assert s.perplexity == pytest.approx(math.exp(s.total_nll / len(scored)), rel=1e-12)
    d = perplexity(model, ids, DISJOINT, max_length, prefix_token_id=3)
    assert d.total_nll == pytest.approx(_bigram_nll(model.table, ids + [3], range(41)),
                                        rel=1e-12)
    assert d.num_scored_tokens == 41


def test_strided_windows_mask_what_earlier_windows_scored():
    # the module docstring's ruler: 10 tokens, max_length 6, stride 3
    w = strided_windows(list(range(10)), 6, 3)
    assert [x.input_ids.tolist() for x in w] == [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8],
                                                  [6, 7, 8, 9]]
    assert [x.targets.tolist() for x in w] == [[1, 2, 3, 4, 5, IGNORE],
                                                [IGNORE, IGNORE, 6, 7, 8, IGNORE],
                                                [IGNORE, IGNORE, 9, IGNORE]]
    # without overlap, each window's first token is context only (HF's loop does the same)
    w = strided_windows(list(range(10)), 4, 4)
    assert [x.targets.tolist() for x in w] == [[1, 2, 3, IGNORE], [5, 6, 7, IGNORE],
                                                [9, IGNORE]]


def _hf_loop(model, ids, max_length, stride):
    """transformers' docs/source/en/perplexity.md loop, with -100 labels and a summed loss."""
    ids = torch.tensor(ids)
    n, prev_end, nll, count = len(ids), 0, 0.0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        inp = ids[begin:end]
        labels = inp.clone()
        labels[:-trg_len] = -100
        with torch.no_grad():
            h = model(inp, torch.arange(len(inp)), VarlenCausalAttention.from_seq_lens([len(inp)]))
            logits = model.compute_logits(h).double()
        shift = labels[1:]
        nll += float(F.cross_entropy(logits[:-1], shift, ignore_index=-100, reduction="sum"))
        count += int((shift != -100).sum())
        prev_end = end
        if end == n:
            break
    return nll, count


@pytest.mark.parametrize("max_length,stride", [(16, 4), (16, 16), (20, 7)])
def test_strided_equals_hfs_loop_on_a_real_model(max_length, stride):
    model, _ = build_synthetic("tiny", "cpu", torch.float32, seed=3)
    ids = torch.randint(0, 256, (75,), generator=torch.Generator().manual_seed(4)).tolist()
    nll, count = _hf_loop(model, ids, max_length, stride)
    r = perplexity(model, ids, STRIDED, max_length, stride)
    assert r.num_scored_tokens == count
    assert r.total_nll == pytest.approx(nll, rel=1e-9)
    # context matters for this model: a shorter stride (more context) changes the number
    if stride < max_length:
        assert r.total_nll != pytest.approx(perplexity(model, ids, STRIDED, max_length,
                                                       max_length).total_nll, rel=1e-9)


def _lm_eval_windows(tokens, prefix, max_seq_len):
    """lm_eval/utils.py get_rolling_token_windows(context_len=1) + make_disjoint_window, then
    the model input (context + continuation)[:-1] scoring the continuation."""
    pred_len, predicted = max_seq_len, 0
    first = min(max_seq_len, len(tokens))
    pairs = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted += first
    while predicted < len(tokens):
        wpl = min(len(tokens) - predicted, pred_len)
        end = predicted + wpl
        pairs.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - wpl:end]))
        predicted += wpl
    out = []
    for a, b in pairs:
        a = a[:len(a) - (len(b) - 1)]
        out.append(((a + b)[:-1], b))
    return out


@pytest.mark.parametrize("n,L", [(5, 8), (8, 8), (9, 8), (30, 8), (31, 4)])
def test_disjoint_windows_are_lm_evals(n, L):
    tokens = list(range(100, 100 + n))
    ours = disjoint_windows(tokens, L, prefix_token_id=1)
    theirs = _lm_eval_windows(tokens, 1, L)
    assert len(ours) == len(theirs)
    for w, (inp, cont) in zip(ours, theirs):
        assert w.input_ids.tolist() == inp
        assert [t for t in w.targets.tolist() if t != IGNORE] == cont
        assert w.targets.tolist()[-len(cont):] == cont      # the continuation ends the window


def test_word_and_byte_perplexity_by_hand():
    text = "héllo wörld  foo\n"       # 3 words + the empty string after the final \n -> 4
    assert count_words(text) == 4
    nbytes = len(text.encode("utf-8"))
    assert nbytes == 19
    r = text_perplexity(uniform_lm(512), byte_tokenizer(), text, DISJOINT, max_length=8)
    # byte tokenizer: one token per byte, all scored, each costing ln 512
    assert r.num_scored_tokens == nbytes
    assert r.total_nll == pytest.approx(nbytes * math.log(512), rel=1e-12)
    assert r.word_perplexity == pytest.approx(512 ** (nbytes / 4), rel=1e-9)
    assert r.byte_perplexity == pytest.approx(512, rel=1e-12)
    assert r.bits_per_byte == pytest.approx(9.0, rel=1e-12)
    assert r.to_dict()["label"].startswith("lm-eval disjoint")
    s = text_perplexity(uniform_lm(512), byte_tokenizer(), text, STRIDED, 8, 4)
    assert s.word_perplexity is None and s.num_scored_tokens == nbytes   # BOS is context only


def test_kl_of_a_model_against_itself_is_zero_and_a_perturbed_copy_is_not():
    model, _ = build_synthetic("tiny", "cpu", torch.float32, seed=5)
    other, _ = build_synthetic("tiny", "cpu", torch.float32, seed=5)
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(6)).tolist()
    same = logit_agreement(model, other, ids, DISJOINT, 16, prefix_token_id=256)
    assert same.kl_mean == pytest.approx(0.0, abs=1e-12) and same.top1_agreement == 1.0
    assert same.delta_ppl == pytest.approx(0.0, abs=1e-12) and same.num_scored_tokens == 40
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight) * 0.05)
    diff = logit_agreement(model, other, ids, STRIDED, 16, stride=8)
    assert diff.kl_mean > 1e-4 and diff.kl_max >= diff.kl_mean
    assert diff.top1_agreement < 1.0 and diff.delta_ppl != 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_length=1024), "larger than the model's context"),
    (dict(max_length=16, stride=17), "stride must be between 1 and max_length"),
    (dict(max_length=16, stride=0), "stride must be between"),
    (dict(max_length=0), "max_length must be >= 1"),
])
def test_bad_windows_are_clear_errors(kwargs, match):
    model = uniform_lm(300, max_model_len=512)
    with pytest.raises(ValueError, match=match):
        perplexity(model, list(range(50)), STRIDED, **kwargs)


def test_ids_outside_the_vocab_are_a_clear_error():
    model = uniform_lm(300)
    model.config.vocab_size = 300
    with pytest.raises(ValueError, match="token id 300 is outside the model's vocabulary"):
        perplexity(model, [1, 2, 300], STRIDED, 8)


def test_empty_text_is_a_clear_error():
    for method in (STRIDED, DISJOINT):
        with pytest.raises(ValueError, match="empty"):
            text_perplexity(uniform_lm(300), byte_tokenizer(), " \n ", method, 8)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(uniform_lm(300), [5], STRIDED, 8)


def test_progress_is_called_per_window():
    seen = []
    perplexity(uniform_lm(10), list(range(10)) * 3, DISJOINT, 8, prefix_token_id=0,
               progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
