import json

from typer.testing import CliRunner

from aisp.cli import app
from aisp.model.presets import resolve_model


def test_generate_random_prompts_summary(tmp_path):
    out = tmp_path / "g.json"
    r = CliRunner().invoke(app, ["generate", "--model", "tiny", "--num-prompts", "6",
                                 "--input-len", "12", "--output-len", "5", "--ignore-eos",
                                 "--device", "cpu", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "output tokens / s" in r.output and "TTFT median ms" in r.output
    data = json.loads(out.read_text())
    assert data["summary"]["num_requests"] == 6 and data["summary"]["output_tokens"] == 30
    assert all(len(o["output_token_ids"]) == 5 for o in data["outputs"])


def test_generate_text_prompt_and_errors():
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "--prompt", "Hello", "--output-len", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "Hello" in r.output
    r = runner.invoke(app, ["generate", "--device", "cpu"])
    assert r.exit_code == 2 and "either --prompt" in r.output
    r = runner.invoke(app, ["generate", "--prompt", "x", "--model", "nope", "--device", "cpu"])
    assert r.exit_code == 2 and "neither a preset" in r.output
    r = runner.invoke(app, ["generate", "--num-prompts", "1", "--input-len", "600",
                            "--device", "cpu"])
    assert r.exit_code == 2 and "context" in r.output


def test_save_synthetic_round_trip(tmp_path):
    r = CliRunner().invoke(app, ["model", "save-synthetic", "tiny", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    src = resolve_model(str(tmp_path / "m"))
    assert src.config == resolve_model("tiny").config
    r = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "m"), "--prompt", "ab",
                                 "--output-len", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["model", "save-synthetic", "huge", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown preset 'huge'" in r.output


def test_generate_async_scheduling_flag_changes_no_token(tmp_path):
    outs = {}
    for mode in ("off", "on"):
        path = tmp_path / f"{mode}.json"
        r = CliRunner().invoke(app, ["generate", "--model", "tiny", "--num-prompts", "4",
                                     "--input-len", "9", "--output-len", "6", "--ignore-eos",
                                     "--device", "cpu", "--async-scheduling", mode,
                                     "--json", str(path)])
        assert r.exit_code == 0, r.output
        outs[mode] = [o["output_token_ids"] for o in json.loads(path.read_text())["outputs"]]
    assert outs["on"] == outs["off"]
    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--device", "cpu",
                                 "--async-scheduling", "sometimes"])
    assert r.exit_code == 2 and "async_scheduling 'sometimes' unknown" in r.output
