import json
import shutil

import pytest
from typer.testing import CliRunner

from aisp.cli import app
from aisp.model.presets import resolve_model, save_synthetic


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


def test_generate_json_path_is_checked_before_generating(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    base = ["generate", "--prompt", "Hello", "--output-len", "2", "--device", "cpu"]
    for path, message in [(a_file / "x.json", f"--json: the folder {a_file} cannot be made "
                                              f"because {a_file} is a file"),
                          (tmp_path, f"--json {tmp_path} is a folder; give a file path")]:
        r = CliRunner().invoke(app, base + ["--json", str(path)])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
        assert message in " ".join(r.output.split()), r.output   # rich wraps long lines
        assert "generate summary" not in r.output   # refused before the work, not after it
    out = tmp_path / "no" / "such" / "dir" / "x.json"   # folders that do not exist are made
    r = CliRunner().invoke(app, base + ["--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["summary"]["num_requests"] == 1


def test_generate_refuses_devices_and_kernels_it_cannot_run(monkeypatch):
    base = ["generate", "--prompt", "x", "--output-len", "2"]
    r = CliRunner().invoke(app, base + ["--device", "tpu"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "device 'tpu' is not a device aisp runs on; valid: cpu, cuda, cuda:N" in r.output
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # a user's CPU, not the test suite's
    r = CliRunner().invoke(app, base + ["--device", "cpu", "--attention-kernels", "triton"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    out = " ".join(r.output.split())
    assert "attention_kernels='triton' needs a CUDA device" in out, r.output
    assert "on a CPU use 'torch' or 'auto'" in out and "TRITON_INTERPRET=1" in out


def test_generate_names_the_flag_that_set_the_context_limit():
    r = CliRunner().invoke(app, ["generate", "--num-prompts", "1", "--input-len", "40",
                                 "--device", "cpu", "--num-kv-blocks", "1"])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())   # rich wraps long lines
    assert "max_model_len is 16 tokens (capped by the KV cache: --num-kv-blocks 1 x " \
           "--block-size 16; raise --num-kv-blocks, the model's context is 512)" in out, r.output


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_synthetic("tiny", tmp_path_factory.mktemp("tiny"), seed=0)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


# (file to damage, how, words the error must hold besides the file's path)
DAMAGE = [
    ("config.json", lambda p: p.write_text('{"architectures": ["Llama\x01"]}'),
     "is not valid JSON (Invalid control character"),
    ("model.safetensors", _truncate, "is not a readable safetensors file"),
    ("model.safetensors", lambda p: p.unlink(), "so there are no weights to load"),
    ("tokenizer.json", lambda p: p.write_text('{"version": "1.0", "trunc'),
     "cannot be read by the tokenizers library"),
]


@pytest.mark.parametrize("name,damage,words", DAMAGE,
                         ids=["config-json", "truncated-weights", "no-weights", "tokenizer-json"])
def test_generate_names_a_damaged_model_file(tiny_folder, tmp_path, name, damage, words):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    damage(folder / name)
    r = CliRunner().invoke(app, ["generate", "--model", str(folder), "--prompt", "x",
                                 "--output-len", "2", "--device", "cpu"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    out = " ".join(r.output.split())   # rich wraps long lines
    named = folder / name if (folder / name).exists() else folder   # the file, or its folder
    assert str(named) in out and words in out, r.output


def test_generate_refuses_an_unknown_compile_mode():
    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--compile", "max", "--device", "cpu"])
    assert r.exit_code == 2 and "choose one of none, regional, full" in r.output
