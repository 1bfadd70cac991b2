"""Workloads: exact random lengths, shared-prefix structure, salting, dataset parsing."""

import itertools
import json

import pytest

from aisp.loadtest.config import ConfigError, LengthSpec, WorkloadConfig
from aisp.loadtest.datasets import load_dataset
from aisp.loadtest.workloads import SALT_TOKENS, build_workload, salt_text


def take(workload, n):
    return list(itertools.islice(workload.requests(), n))


def random_cfg(**kw):
    base = dict(input_len=LengthSpec.fixed(37), output_len=LengthSpec.fixed(9), vocab_size=500,
                token_id_min=100)
    return WorkloadConfig(**{**base, **kw})


def test_random_lengths_are_exact_and_ids_in_range():
    reqs = take(build_workload(random_cfg(salt=False), seed=0), 50)
    for r in reqs:
        assert len(r.prompt) == 37 == r.num_prompt_tokens and r.max_tokens == 9
        assert all(100 <= t < 500 for t in r.prompt)
    assert len({tuple(r.prompt) for r in reqs}) == 50


def test_random_length_ranges_cover_the_range_and_only_it():
    cfg = random_cfg(input_len=LengthSpec(10, 20), output_len=LengthSpec.around(100, 0.5),
                     salt=False)
    reqs = take(build_workload(cfg, seed=1), 400)
    assert {len(r.prompt) for r in reqs} == set(range(10, 21))
    outs = {r.max_tokens for r in reqs}
    assert min(outs) >= 50 and max(outs) <= 150 and len(outs) > 50
    assert LengthSpec.parse("256:1024") == LengthSpec(256, 1024)
    assert LengthSpec.parse("100", range_ratio=0.25) == LengthSpec(75, 125)
    with pytest.raises(ConfigError, match="already a range"):
        LengthSpec.parse("1:5", range_ratio=0.5)
    with pytest.raises(ConfigError, match="LOW:HIGH"):
        LengthSpec.parse("ten")


def test_salt_differs_per_run_and_is_reproducible_per_seed_and_nonce():
    a, b = (take(build_workload(random_cfg(), seed=0), 5) for _ in range(2))
    wa, wb = build_workload(random_cfg(), 0), build_workload(random_cfg(), 0)
    assert wa.salt_nonce != wb.salt_nonce  # fresh per run
    assert a[0].prompt[:SALT_TOKENS] != b[0].prompt[:SALT_TOKENS]
    # Same seed: everything after the salt is the same; lengths stay exact.
    assert [r.prompt[SALT_TOKENS:] for r in a] == [r.prompt[SALT_TOKENS:] for r in b]
    assert all(len(r.prompt) == 37 for r in a + b)
    # A run is reproducible exactly given its seed and nonce (recorded in results.json).
    fixed = random_cfg(salt_nonce=wa.salt_nonce)
    assert take(build_workload(fixed, 0), 5) == take(build_workload(fixed, 0), 5)
    # All requests of one run share the salt; --no-salt removes it.
    assert len({tuple(r.prompt[:SALT_TOKENS]) for r in a}) == 1
    unsalted = take(build_workload(random_cfg(salt=False), 0), 5)
    assert build_workload(random_cfg(salt=False), 0).salt_nonce is None
    assert [r.prompt[SALT_TOKENS:] for r in unsalted] == [r.prompt[SALT_TOKENS:] for r in a]
    with pytest.raises(ConfigError, match="salting is off"):
        random_cfg(salt=False, salt_nonce=5)


def test_shared_prefix_groups_share_exactly_their_prefix_with_salt_first():
    cfg = WorkloadConfig(kind="shared-prefix", num_prefixes=3, prefix_len=16,
                         input_len=LengthSpec.fixed(8), output_len=LengthSpec.fixed(4),
                         vocab_size=1000, salt_nonce=1234)
    w = build_workload(cfg, seed=0)
    reqs = take(w, 60)
    assert {r.group for r in reqs} == {0, 1, 2}
    for r in reqs:
        assert len(r.prompt) == 16 + 8 == r.num_prompt_tokens and r.max_tokens == 4
    by_group = {g: [r for r in reqs if r.group == g] for g in range(3)}
    for rs in by_group.values():
        assert len({tuple(r.prompt[:16]) for r in rs}) == 1  # the whole prefix is shared
        assert len({tuple(r.prompt[16:]) for r in rs}) == len(rs)  # suffixes unique
    prefixes = [by_group[g][0].prompt[:16] for g in range(3)]
    assert len({tuple(p[:SALT_TOKENS]) for p in prefixes}) == 3  # salt per (run, group)
    # Another run (nonce): the salt at the start changes, the rest of each prefix does not.
    other = take(build_workload(
        WorkloadConfig(**{**cfg.__dict__, "salt_nonce": 99}), seed=0), 60)
    o = {r.group: r.prompt for r in other}
    for g in range(3):
        assert o[g][:SALT_TOKENS] != prefixes[g][:SALT_TOKENS]
        assert o[g][SALT_TOKENS:16] == prefixes[g][SALT_TOKENS:]


SHAREGPT = [
    {"conversations": [{"from": "human", "value": "What is a KV cache?"},
                       {"from": "gpt", "value": "It stores keys and values per token."}]},
    {"conversations": [{"from": "system", "value": "be brief"},
                       {"from": "human", "value": "hi there"},
                       {"from": "gpt", "value": "hello"},
                       {"from": "human", "value": "more"}]},
    {"conversations": [{"from": "gpt", "value": "no human here"}]},  # malformed
    {"conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "x"}]},
    {"conversations": [{"from": "human", "value": "no reply"}]},  # no output length
    {"conversations": "not a list"},
    {"unrelated": 1},
    42,
    {"prompt": "plain prompt", "output_len": 7},
    {"prompt": [5, 6, 7], "max_tokens": 3},
    {"messages": [{"role": "user", "content": "openai style"},
                  {"role": "assistant", "content": "one two three"}]},
]


def test_sharegpt_parsing_counts_malformed_entries(tmp_path):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(SHAREGPT))
    ds = load_dataset(path)
    assert ds.format == "json"
    prompts = [(e.prompt, e.output_len) for e in ds.entries]
    assert prompts == [("What is a KV cache?", 7), ("hi there", 1), ("plain prompt", 7),
                       ((5, 6, 7), 3), ("openai style", 3)]
    assert ds.num_skipped == 6
    assert ds.skipped_reasons["no human turn"] == 1
    assert ds.skipped_reasons["no reply to take the output length from"] == 1
    # With a fixed output length, a human turn without a reply is usable.
    assert len(load_dataset(path, need_output_len=False).entries) == 6
    # Chat takes text only: the token-id prompt is skipped with its reason.
    chat = load_dataset(path, text_only=True)
    assert chat.skipped_reasons["token-id prompt (chat takes text)"] == 1


def test_jsonl_file_workload_salts_text_and_cycles(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"prompt": f"prompt {i}", "output_len": i + 1}) for i in range(3)]
    path.write_text("\n".join(lines + ["{not json", ""]) + "\n")
    w = build_workload(WorkloadConfig(kind="file", dataset_path=str(path), salt_nonce=7), seed=0)
    assert w.num_entries == 3 and w.num_skipped == 1
    assert w.skipped_reasons == {"invalid JSON line": 1}
    reqs = take(w, 9)
    assert all(r.prompt.startswith(salt_text(7)) for r in reqs)
    assert sorted(r.prompt for r in reqs[:3]) == sorted(salt_text(7) + f"prompt {i}"
                                                      for i in range(3))
    assert {(r.prompt[-1], r.max_tokens) for r in reqs} == {("0", 1), ("1", 2), ("2", 3)}
    fixed = build_workload(WorkloadConfig(kind="file", dataset_path=str(path), salt=False,
                                          output_len=LengthSpec.fixed(5)), seed=0)
    assert {r.max_tokens for r in take(fixed, 6)} == {5}
    assert not take(fixed, 1)[0].prompt.startswith("[run")


def test_dataset_without_usable_entries_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"conversations": []}, "bare"]))
    with pytest.raises(ConfigError, match="no usable entry.*--output-len"):
        build_workload(WorkloadConfig(kind="file", dataset_path=str(path)), seed=0)
    with pytest.raises(ConfigError, match="is not a file"):
        WorkloadConfig(kind="file", dataset_path=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="needs a dataset"):
        WorkloadConfig(kind="file")
