"""The CLI as users call it: subprocesses from the repo root, and Typer's runner in-process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aisp.cli import app
from aisp.harness import discovery

from .harness.toy_chapter import write_pair, write_rotating_pair

ROOT = Path(__file__).resolve().parents[1]


def _sh(*args, cwd=ROOT, **env_vars):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_vars)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_list_targets_through_python_m_cli():
    r = _sh("-m", "cli.aisp", "bench", "list-targets", "--chapter", "ch16")
    assert r.returncode == 0, r.stderr
    assert "ch16:flash_sdp" in r.stdout.split()


def test_compare_prints_the_verified_flash_row(tmp_path):
    out = tmp_path / "r.json"
    r = _sh("ch16/compare.py", "--profile", "none", "--iterations", "3", "--warmup", "1",
            "--json", str(out), "--artifacts-dir", str(tmp_path / "art"))
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(l for l in r.stdout.splitlines() if "flash_sdp" in l)
    assert "yes" in line and "x" in line
    results = json.loads(out.read_text())
    [row] = [x for x in results["rows"] if x["key"].startswith("flash_sdp")]
    assert row["verified"] and len(row["optimized"]["timing"]["samples_ms"]) == 3
    assert results["provenance"]["command"].startswith("ch16/compare.py")
    assert list((tmp_path / "art").glob("*/report.md"))


def test_bad_flags_are_errors_not_ignored():
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "run", "--targets", "ch16:nope"])
    assert r.exit_code == 2 and "available: ch16:flash_sdp" in r.output
    r = runner.invoke(app, ["bench", "run", "--targets", "ch16", "--profile", "loud"])
    assert r.exit_code == 2 and "unknown profile 'loud'" in r.output
    r = runner.invoke(app, ["bench", "run", "--targets", "ch16", "--iterations", "0"])
    assert r.exit_code == 2


def test_hw_json():
    r = CliRunner().invoke(app, ["hw", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["hardware"]["key"] == "cpu" and data["ceilings"]["copy_bytes_per_s"] > 0


@pytest.fixture
def toy_root(tmp_path, monkeypatch):
    monkeypatch.setattr(discovery, "REPO_ROOT", tmp_path)
    return tmp_path


def test_update_expectations_then_compare_and_refuse_failed(toy_root, tmp_path):
    write_pair(toy_root, "ch90", "mm", "lambda a, x: (a.double() @ x.double()).float()",
               {"": "lambda a, x: a @ x"})
    runner = CliRunner()
    args = ["bench", "run", "--targets", "ch90", "--device", "cpu", "--artifacts-dir",
            str(tmp_path / "art")]
    r = runner.invoke(app, args + ["--update-expectations"])
    assert r.exit_code == 0, r.output
    exp_file = toy_root / "ch90" / "expectations_cpu.json"
    entry = json.loads(exp_file.read_text())["pairs"]["mm"]
    assert entry["workload"] == {"n": 64, "dtype": "float32"} and entry["provenance"]["git_sha"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "new" not in r.output.split("mm", 1)[1].splitlines()[0]

    # Now the optimized side is wrong: the run fails, and the file is left alone.
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: -(a @ x)"})
    before = exp_file.read_text()
    r = runner.invoke(app, args + ["--update-expectations"])
    assert r.exit_code == 1 and "not updated" in r.output
    assert exp_file.read_text() == before

    exp_file.write_text("{oops")
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and str(exp_file) in r.output.replace("\n", "")


def test_unknown_or_absent_devices_exit_2_before_anything_runs(toy_root, tmp_path, monkeypatch):
    monkeypatch.delenv("AISP_DEVICE", raising=False)   # restored after; bench run sets it
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    runner = CliRunner()
    for args in (["hw", "--device", "tpu"],
                 ["bench", "run", "--targets", "ch90", "--device", "tpu", "--artifacts-dir",
                  str(tmp_path / "art")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert "--device 'tpu' is not a device aisp runs on; valid: cpu, cuda, cuda:N" in r.output
        assert "measuring ceilings" not in r.output and "copy bandwidth" not in r.output
    assert "AISP_DEVICE" not in os.environ and not (tmp_path / "art").exists()
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["hw", "--device", "cuda"])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
        assert "--device 'cuda' was asked for, but torch sees no CUDA GPU" in r.output


def test_bench_output_paths_are_checked_before_the_run(toy_root, tmp_path, monkeypatch):
    monkeypatch.delenv("AISP_DEVICE", raising=False)
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    art = ["--artifacts-dir", str(tmp_path / "art")]
    cases = [(["--artifacts-dir", str(a_file)],
              f"--artifacts-dir: the folder {a_file} cannot be made because {a_file} is a file"),
             (art + ["--json", str(tmp_path)], f"--json {tmp_path} is a folder; give a file path"),
             (art + ["--json", str(a_file / "r.json")],
              f"--json: the folder {a_file} cannot be made because {a_file} is a file")]
    runner = CliRunner()
    base = ["bench", "run", "--targets", "ch90", "--device", "cpu"]
    for args, message in cases:
        r = runner.invoke(app, base + args)
        assert r.exit_code == 2, r.output
        assert message in " ".join(r.output.split()), r.output   # rich wraps long lines
        assert "measuring ceilings" not in r.output   # refused before the run, not after it
    assert not list(tmp_path.glob("art/*/results.json"))
    # A --json in folders that do not exist yet: they are made, and the run writes there.
    out = tmp_path / "new" / "sub" / "r.json"
    r = runner.invoke(app, base + art + ["--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["rows"][0]["key"].startswith("mm")
def _results(tmp_path):
    [path] = (tmp_path / "art").glob("*/results.json")
    return json.loads(path.read_text())


def test_bench_run_prints_and_records_the_seed_it_drew(toy_root, tmp_path):
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    r = CliRunner().invoke(app, ["bench", "run", "--targets", "ch90", "--device", "cpu",
                                 "--artifacts-dir", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    options = _results(tmp_path)["options"]
    seed = options["seed_used"]
    assert isinstance(seed, int) and options["seed_drawn"] and options["seed_requested"] is None
    assert f"seed {seed} (drawn; rerun with --seed {seed})" in r.output
    assert [row["seed"] for row in _results(tmp_path)["rows"]] == [seed]


def test_cold_l2_on_the_cpu_warns_and_records_what_was_done(toy_root, tmp_path):
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    r = CliRunner().invoke(app, ["bench", "run", "--targets", "ch90", "--device", "cpu",
                                 "--cold-l2", "--seed", "3", "--artifacts-dir",
                                 str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    assert "warning: --cold-l2 is not applied: no GPU L2 to flush on the cpu" in r.output
    options = _results(tmp_path)["options"]
    assert options["cold_l2_requested"] is True and options["cold_l2_applied"] is False
    assert "no GPU L2" in options["cold_l2_reason"]
    assert options["seed_used"] == 3 and not options["seed_drawn"]


def test_a_run_too_noisy_to_tell_is_inconclusive_and_the_gate_says_how_it_counts(toy_root,
                                                                                tmp_path):
    # The optimized side sleeps 0, 6 or 12 ms in turn: its own noise is far above ±10%.
    write_rotating_pair(toy_root, "ch91", "mm", "lambda a, x, i, n: a @ x",
                        "lambda a, x, i, n: (__import__('time').sleep(0.006 * (n % 3)), a @ x)[1]",
                        input_sets=1)
    (toy_root / "ch91" / "expectations_cpu.json").write_text(json.dumps(
        {"schema_version": 1, "hardware_key": "cpu", "pairs": {"mm": {
            "speedup": 0.001, "tolerance": 0.1, "speedup_rel_noise": 0.01,
            "workload": {"n": 16, "dtype": "float32"}}}}))
    args = ["bench", "run", "--targets", "ch91", "--device", "cpu", "--iterations", "9",
            "--fail-on-regression", "--artifacts-dir", str(tmp_path / "art")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 3, r.output
    verdict = _results(tmp_path)["rows"][0]["verdict"]
    assert verdict["status"] == "inconclusive"
    assert verdict["label"].startswith("inconclusive (noise ±")
    assert f"mm {verdict['label']}:" in r.output       # the line that says why
    assert "exceeds the tolerance (±10%)" in r.output
    assert "--inconclusive-passes lets them pass" in r.output
    r = CliRunner().invoke(app, args + ["--inconclusive-passes", "--artifacts-dir",
                                        str(tmp_path / "art2")])
    assert r.exit_code == 0, r.output
    assert "inconclusive rows pass (--inconclusive-passes): mm" in r.output


def test_errors_are_printed_as_written_not_as_markup():
    r = CliRunner().invoke(app, ["bench", "run", "--targets", "ch16:flash_sdp[b1_s256]"])
    assert r.exit_code == 2
    assert "unknown target 'ch16:flash_sdp[b1_s256]'" in r.output
    r = CliRunner().invoke(app, ["model", "save-synthetic", "[bold]tiny", "/tmp/unused"])
    assert r.exit_code == 2 and "unknown preset '[bold]tiny'" in r.output


def test_scripts_that_supply_their_targets_do_not_ask_for_them():
    for script, default in (("ch16/compare.py", "ch16"),
                            ("ch16/optimized_flash_sdp.py", "ch16:flash_sdp")):
        r = _sh(script, "--help", COLUMNS="200")       # wide enough that no flag is cut
        assert r.returncode == 0, r.stderr
        text = " ".join(r.stdout.split())
        assert "required" not in text
        assert f"[default: {default}]" in text
        assert "--inconclusive-fails" in text and "--inconclusive-passes" in text
    assert "Compare every ch16 baseline/optimized pair" in _sh("ch16/compare.py", "--help").stdout
    # `aisp bench run` itself still needs them.
    r = CliRunner().invoke(app, ["bench", "run"])
    assert r.exit_code == 2 and "--targets" in r.output


def test_list_targets_help_says_what_a_variant_is_and_lists_only_real_ones(toy_root):
    r = CliRunner().invoke(app, ["bench", "list-targets", "--help"])
    assert "is a variant: another optimized implementation" in " ".join(r.output.split())
    write_pair(toy_root, "ch90", "mm", "lambda a, x: a @ x",
               {"": "lambda a, x: a @ x", "t": "lambda a, x: (x.T @ a.T).T"})
    write_pair(toy_root, "ch90", "plain", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    r = CliRunner().invoke(app, ["bench", "list-targets"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["ch90:mm  (variants: mm_t)", "ch90:plain"]
