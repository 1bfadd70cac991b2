import pytest
import torch

from aisp.engine.sampler import Sampler, make_generator
from aisp.engine.sampling_params import SamplingParams


def _logits(n=4, vocab=50, seed=0):
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = _logits()
    out = Sampler()(logits, [SamplingParams(temperature=0)] * 4)
    assert torch.equal(out, logits.argmax(-1))


def test_top_k_one_is_argmax_even_when_hot():
    logits = _logits()
    out = Sampler()(logits, [SamplingParams(temperature=5.0, top_k=1)] * 4)
    assert torch.equal(out, logits.argmax(-1))


def test_seeded_rows_do_not_depend_on_batch_mates():
    logits = _logits(n=3, vocab=1000)
    p = SamplingParams(temperature=1.0, seed=7)
    alone = Sampler()(logits[:1], [p], [make_generator(7, logits.device)])
    batch = Sampler()(logits, [p, SamplingParams(temperature=1.0), SamplingParams(temperature=0)],
                      [make_generator(7, logits.device), None, None])
    assert alone[0] == batch[0]


@pytest.mark.parametrize("kw", [dict(top_k=5), dict(top_p=0.5), dict(min_p=0.02)])
def test_filters_never_sample_outside_the_kept_set(kw):
    logits = _logits(n=1, vocab=40, seed=3)
    probs = torch.softmax(logits[0], -1)
    sorted_p, order = probs.sort(descending=True)
    if "top_k" in kw:
        allowed = set(order[:5].tolist())
    elif "top_p" in kw:
        before = sorted_p.cumsum(0) - sorted_p
        allowed = set(order[before < 0.5].tolist())
    else:
        allowed = set(order[sorted_p >= 0.02 * sorted_p[0]].tolist())
    assert 1 < len(allowed) < 40  # the filter must actually cut something here
    g = torch.Generator().manual_seed(1)
    seen = {int(Sampler()(logits, [SamplingParams(temperature=1.0, **kw)], [g])[0])
            for _ in range(300)}
    assert seen <= allowed and len(seen) > 1


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits[0] / 0.8, -1)
    g = torch.Generator().manual_seed(0)
    n = 4000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[Sampler()(logits, [SamplingParams(temperature=0.8)], [g])[0]] += 1
    # 4 standard errors of a binomial proportion: a broken sampler misses by far more.
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() < 4 * se + 1e-3).all(), (counts / n, probs)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 sampling params for 4 rows"):
        Sampler()(_logits(), [SamplingParams()] * 2)
