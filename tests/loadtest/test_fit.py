"""Fitting the defaults to the server's model card (aisp/loadtest/fit.py): pure, no network."""

from aisp.loadtest.config import LengthSpec, WorkloadConfig
from aisp.loadtest.fit import fit_workload
from aisp.loadtest.probe import ModelCard

ALL = {"input_len", "output_len", "prefix_len", "vocab_size"}


def random_cfg(input_len="1024", output_len="128", **kw):
    return WorkloadConfig(input_len=LengthSpec.parse(input_len),
                          output_len=LengthSpec.parse(output_len), **kw)


def test_defaulted_lengths_shrink_in_proportion_and_ids_follow_the_vocabulary():
    fit = fit_workload(random_cfg(defaulted=ALL), ModelCard("m", 512, 259))
    w = fit.workload
    assert (w.input_len, w.output_len) == (LengthSpec.fixed(455), LengthSpec.fixed(56))
    assert w.input_len.high + w.output_len.high <= 512 and w.vocab_size == 259
    assert len(fit.notes) == 2 and "1,152 tokens would be refused" in fit.notes[0]
    assert "[0, 259)" in fit.notes[1]


def test_ranges_and_shared_prefix_fit_and_explicit_lengths_keep_their_values():
    cfg = random_cfg("200:1000", defaulted={"input_len", "vocab_size"})   # output_len explicit
    w = fit_workload(cfg, ModelCard("m", 512, None)).workload
    assert w.output_len == LengthSpec.fixed(128) and w.input_len.high + 128 <= 512
    assert w.input_len.low == int(200 * 384 / 1000) and w.vocab_size == 32000   # no vocab_size
    sp = WorkloadConfig(kind="shared-prefix", input_len=LengthSpec.fixed(256),
                        output_len=LengthSpec.fixed(128), prefix_len=256, defaulted=ALL)
    w = fit_workload(sp, ModelCard("m", 512, 512)).workload
    assert w.prefix_len + w.input_len.high + w.output_len.high <= 512
    assert w.prefix_len == w.input_len.high == 204 and w.output_len.high == 102


def test_nothing_changes_when_it_fits_when_the_card_is_silent_or_the_user_chose():
    cfg = random_cfg("64", "16", defaulted=ALL, vocab_size=512)
    assert fit_workload(cfg, ModelCard("m", 512, 512)).notes == ()
    big = random_cfg(defaulted=ALL)
    assert fit_workload(big, None).workload == big
    assert fit_workload(big, ModelCard("m")).workload == big   # vLLM-like card without limits
    explicit = random_cfg(vocab_size=1000)
    fit = fit_workload(explicit, ModelCard("m", 512, 512))
    assert fit.workload == explicit
    assert "will refuse" in fit.notes[0] and "--input-len/--output-len" in fit.notes[0]
    assert "--vocab-size 1,000 exceeds the server's vocab_size of 512" in fit.notes[1]
