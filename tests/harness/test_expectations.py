import json

import pytest

from aisp.harness import expectations as exp

WORKLOAD = {"n": 64, "dtype": "float32"}
PROV = {"date": "2026-11-26T00:00:00Z", "git_sha": "abc", "command": "test"}


def _row(key="mm", verified=True, speedup=4.0, noise=0.01, error=None, workload=WORKLOAD):
    return {"key": key, "verified": verified, "error": error, "speedup": speedup,
            "speedup_rel_noise": noise, "workload": workload, "metrics": {"optimized_median_ms": 1.0}}


def test_round_trip_and_verdicts(tmp_path):
    path = tmp_path / "expectations_cpu.json"
    updated, refused = exp.update(path, "cpu", [_row()], PROV)
    assert (updated, refused) == (["mm"], [])
    entry = exp.load(path, "cpu")["pairs"]["mm"]
    assert entry["speedup"] == 4.0 and entry["workload"] == WORKLOAD
    assert entry["provenance"] == PROV and entry["tolerance"] == exp.DEFAULT_TOLERANCE

    def verdict(speedup, noise=0.01, workload=WORKLOAD):
        return exp.judge(entry, verified=True, speedup=speedup, speedup_rel_noise=noise,
                         workload=workload).status

    assert verdict(4.1) == "ok"
    assert verdict(3.0) == "regressed"
    assert verdict(5.0) == "improved"
    # A run noisier than the tolerance cannot say ok: 3.0 vs 4.0 inside ±30% noise is unknown.
    assert verdict(3.0, noise=0.15) == "inconclusive"
    assert verdict(4.0, noise=0.15) == "inconclusive"
    # ...but a speed-up below even the noise band is a regression whatever the noise.
    assert verdict(1.0, noise=0.15) == "regressed"
    # Noise exactly at the tolerance (2 x 5% = 10%) still decides.
    assert verdict(4.1, noise=0.05) == "ok"
    assert verdict(4.0, workload={"n": 128, "dtype": "float32"}) == "workload-changed"
    assert exp.judge(None, verified=True, speedup=2.0, speedup_rel_noise=0,
                     workload=WORKLOAD).status == "new"
    assert exp.judge(entry, verified=False, speedup=4.0, speedup_rel_noise=0,
                     workload=WORKLOAD).status == "failed"


def test_refuses_to_update_from_failed_rows_and_keeps_old_entries(tmp_path):
    path = tmp_path / "expectations_cpu.json"
    exp.update(path, "cpu", [_row("a", speedup=2.0), _row("b", speedup=3.0)], PROV)
    updated, refused = exp.update(path, "cpu", [_row("a", verified=False, speedup=9.0),
                                                _row("b", error="boom", speedup=9.0),
                                                _row("c", speedup=5.0)], PROV)
    assert updated == ["c"] and refused == ["a", "b"]
    pairs = exp.load(path)["pairs"]
    assert (pairs["a"]["speedup"], pairs["b"]["speedup"], pairs["c"]["speedup"]) == (2.0, 3.0, 5.0)


def test_hand_set_tolerance_survives_update(tmp_path):
    path = tmp_path / "expectations_cpu.json"
    exp.update(path, "cpu", [_row()], PROV)
    data = json.loads(path.read_text())
    data["pairs"]["mm"]["tolerance"] = 0.3
    path.write_text(json.dumps(data))
    exp.update(path, "cpu", [_row(speedup=5.0)], PROV)
    assert exp.load(path)["pairs"]["mm"]["tolerance"] == 0.3


@pytest.mark.parametrize("content,message", [
    ('{"schema_version": 1, "pairs": {', r"not valid JSON \(line 1, column"),
    ('[1, 2]', "'pairs' object"),
    ('{"schema_version": 7, "pairs": {}}', "schema_version 7"),
    ('{"schema_version": 1, "pairs": {"mm": {"speedup": "fast", "tolerance": 0.1}}}',
     "entry 'mm' field 'speedup' must be a positive number, got 'fast'"),
    ('{"schema_version": 1, "pairs": {"mm": {"speedup": 2.0, "tolerance": -1}}}',
     "entry 'mm' field 'tolerance'"),
    ('{"schema_version": 1, "hardware_key": "h100", "pairs": {}}', "written for hardware 'h100'"),
])
def test_corrupt_files_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "expectations_cpu.json"
    path.write_text(content)
    with pytest.raises(exp.ExpectationsError, match=message) as info:
        exp.load(path, "cpu")
    assert str(path) in str(info.value)


def test_missing_file_is_empty(tmp_path):
    assert exp.load(tmp_path / "nope.json", "cpu")["pairs"] == {}


def test_a_run_too_noisy_to_tell_is_inconclusive_and_says_why():
    # The loaded-machine run of issue 8: 0.34x recorded, 19.67x measured with ±466% noise was
    # called "improved" because the band had been widened to the noise.
    entry = {"speedup": 0.34, "tolerance": 0.1, "speedup_rel_noise": 0.03, "workload": WORKLOAD}
    v = exp.judge(entry, verified=True, speedup=19.67, speedup_rel_noise=2.33, workload=WORKLOAD)
    assert v.status == "inconclusive"
    assert v.label == "inconclusive (noise ±466%)"
    assert "±466%" in v.message and "exceeds the tolerance (±10%)" in v.message
    assert v.to_dict()["label"] == v.label and v.to_dict()["noise"] == pytest.approx(4.66)
    # The same speed-up from a quiet run is a real improvement.
    assert exp.judge(entry, verified=True, speedup=19.67, speedup_rel_noise=0.01,
                     workload=WORKLOAD).status == "improved"
