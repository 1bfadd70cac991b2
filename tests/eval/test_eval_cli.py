"""`aisp eval perplexity` end to end on the tiny preset, and its errors."""

import json

import pytest
from typer.testing import CliRunner

from aisp.cli import app
from aisp.eval.corpus import default_corpus

TEXT = "The quick brown fox jumps over the lazy dog.\nA second line, with more words in it.\n"


def _run(*args):
    return CliRunner().invoke(app, ["eval", "perplexity", "--model", "tiny", "--device", "cpu",
                                    *args])


def test_both_modes_on_a_text_file_write_json(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "sub" / "ppl.json"
    r = _run("--text", str(text), "--max-length", "32", "--stride", "16", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert "hf-strided" in r.output and "lm-eval-disjoint" in r.output
    data = json.loads(out.read_text())
    assert data["corpus"]["num_bytes"] == len(TEXT.encode())
    strided, disjoint = data["results"]
    assert strided["method"] == "hf-strided" and strided["stride"] == 16
    assert strided["label"].startswith("HF strided")
    assert disjoint["num_bytes"] == len(TEXT.encode())
    assert disjoint["num_words"] == 18     # 17 words + the "" after the final \n (lm-eval's count)
    assert disjoint["bits_per_byte"] > 0 and disjoint["num_scored_tokens"] == len(TEXT.encode())
    # a random-weight model over 512 ids is near-uniform: PPL close to the vocab size
    assert 400 < strided["perplexity"] < 700


def test_dtype_flag_is_honoured(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "ppl.json"
    r = _run("--text", str(tmp_path / "t.txt"), "--max-length", "32", "--mode", "disjoint",
             "--dtype", "bfloat16", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["dtype"] == "bfloat16" and "bfloat16" in r.output


def test_default_corpus_runs_offline(tmp_path):
    out = tmp_path / "ppl.json"
    r = _run("--mode", "disjoint", "--max-length", "512", "--json", str(out))
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["corpus"]["name"].startswith("pydoc_data.topics[eval")
    assert data["corpus"]["corpus_sha256"] == default_corpus().sha256
    assert [x["method"] for x in data["results"]] == ["lm-eval-disjoint"]


def test_default_corpus_is_the_training_tools_held_out_split():
    """One convention (aisp.model.corpus): what `aisp model train` holds out is evaluated."""
    from aisp.model.corpus import pydoc_text, stdlib_corpus

    ev, tr = default_corpus("eval").text, default_corpus("train").text
    assert ev.encode() == stdlib_corpus("eval") and (tr + ev).encode() == pydoc_text()
    assert 0.09 < len(ev.encode()) / len(pydoc_text()) <= 0.11


@pytest.mark.parametrize("args,match", [
    (["--max-length", "1024"], "larger than the model's context (512 tokens)"),
    (["--max-length", "16", "--stride", "32"], "stride must be between 1 and max_length"),
    (["--mode", "sideways"], "unknown --mode 'sideways'"),
    (["--dtype", "int3"], "unknown --dtype 'int3'"),
    (["--text", "/nonexistent/x.txt"], "no such file"),
])
def test_bad_inputs_are_clear_errors(tmp_path, args, match):
    if "--text" not in args:
        (tmp_path / "t.txt").write_text(TEXT)
        args = ["--text", str(tmp_path / "t.txt"), *args]
    r = _run(*args)
    assert r.exit_code == 2, r.output
    assert match in " ".join(r.output.split())


def test_empty_text_file_is_an_error(tmp_path):
    (tmp_path / "e.txt").write_text("  \n\n")
    r = _run("--text", str(tmp_path / "e.txt"))
    assert r.exit_code == 2 and "empty" in r.output
