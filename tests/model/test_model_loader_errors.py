"""The loader refuses, by name, any checkpoint that does not match its config.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aisp.model import load_model, resolve_model, save_synthetic
from aisp.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_synthetic("tiny", tmp_path_factory.mktemp("tiny"), seed=0)


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the folder's config.json with model.safetensors passed through `edit(dict)`."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    name = "model.layers.1.self_attn.k_proj.weight"
    folder = rewrite(tiny_dir, tmp_path, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing.*{name}"):
        load_model(folder)


def test_missing_lm_head_of_untied_model_hints_at_tying(tiny_dir: Path, tmp_path: Path) -> None:
    folder = rewrite(tiny_dir, tmp_path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match="lm_head.weight.*tie_word_embeddings"):
        load_model(folder)


def test_unexpected_tensor_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    def add(t: dict) -> None:
        t["model.layers.0.mlp.experts.0.weight"] = torch.randn(4, 4)
    folder = rewrite(tiny_dir, tmp_path, add)
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.0\.mlp\.experts\.0\.weight"):
        load_model(folder)


def test_shape_mismatch_names_tensor_and_both_shapes(tiny_dir: Path, tmp_path: Path) -> None:
    name = "model.layers.0.mlp.up_proj.weight"
    def shrink(t: dict) -> None:
        t[name] = torch.randn(100, 64)
    folder = rewrite(tiny_dir, tmp_path, shrink)
    with pytest.raises(ValueError, match=rf"{name}.*\(100, 64\).*\(128, 64\)"):
        load_model(folder)


def test_tied_checkpoint_with_a_different_lm_head_is_refused(tmp_path: Path) -> None:
    src = save_synthetic("tiny-qwen3", tmp_path / "src", seed=0)
    folder = rewrite(src, tmp_path / "bad", lambda t: t.__setitem__("lm_head.weight", torch.randn(512, 64)))
    with pytest.raises(ValueError, match="tie_word_embeddings.*differs"):
        load_model(folder)
    same = rewrite(src, tmp_path / "ok",
                   lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    load_model(same)  # a duplicate that equals the embedding is fine


def test_pickled_weights_are_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(resolve_model("tiny").config.to_hf()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*never loaded"):
        load_model(tmp_path)


def test_unknown_preset_lists_the_presets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llama-3-8bb") as e:
        resolve_model("llama-3-8bb")
    assert "llama-3-8b," in str(e.value) and "tiny" in str(e.value)
    with pytest.raises(ValueError, match="without config.json"):
        resolve_model(str(tmp_path))


# Damaged files: each error names the file and the problem, as a ValueError the CLIs turn into
# exit 2 (json's and safetensors' own messages name neither).

def _copy(tiny_dir: Path, dst: Path) -> Path:
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.mark.parametrize("text,problem", [
    ('{"architectures": ["Llama\x01"]}', r"is not valid JSON \(Invalid control character"),
    ('{"vocab_size": 512,', r"is not valid JSON"),
    ("[1, 2]", r"holds a JSON list, not an object"),
])
def test_a_damaged_config_json_is_named(tiny_dir: Path, tmp_path: Path, text: str,
                                        problem: str) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / "config.json").write_text(text)
    for load in (resolve_model, load_model):
        with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'config.json'))} {problem}"):
            load(str(folder))


def test_a_config_json_that_is_not_utf8_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'config.json'))} is not UTF-8"):
        resolve_model(str(folder))


@pytest.mark.parametrize("keep", [20, 1000, -100], ids=["header", "half-header", "data"])
def test_a_truncated_safetensors_file_is_named(tiny_dir: Path, tmp_path: Path, keep: int) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(ValueError, match=rf"{re.escape(str(weights))} \([\d,]+ bytes\) is not a "
                                         r"readable safetensors file: .*cut short"):
        load_model(folder)


def test_a_damaged_shard_index_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"model.norm.weight": ')
    with pytest.raises(ValueError, match=rf"{re.escape(str(index))} is not valid JSON"):
        load_model(folder)
    index.write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(index))} has no 'weight_map'"):
        load_model(folder)


def test_a_folder_without_weights_says_what_is_missing(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors .*found: config\.json.*"
                                                r"no weights to load; put the checkpoint's "
                                                r"\*\.safetensors files beside its config\.json"):
        load_model(folder)


@pytest.mark.parametrize("name,text,problem", [
    ("tokenizer.json", '{"version": "1.0", "trunc', "cannot be read by the tokenizers library"),
    ("tokenizer_config.json", '{"eos_token": ', "is not valid JSON"),
    ("generation_config.json", "\x01", "is not valid JSON"),
])
def test_a_damaged_tokenizer_file_is_named(tiny_dir: Path, tmp_path: Path, name: str, text: str,
                                           problem: str) -> None:
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / name).write_text(text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / name))} {problem}"):
        load_tokenizer(folder)
