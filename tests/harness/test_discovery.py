import pytest

from aisp.harness.discovery import TargetError, chapters, discover_pairs, resolve_targets

from .toy_chapter import write_pair


def _layout(tmp_path):
    write_pair(tmp_path, "ch90", "flash", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    write_pair(tmp_path, "ch90", "flash_sdp", "lambda a, x: a @ x",
               {"": "lambda a, x: a @ x", "cudnn": "lambda a, x: a @ x"})
    (tmp_path / "ch90" / "baseline_lonely.py").write_text("def get_benchmark(): pass\n")
    (tmp_path / "ch91").mkdir()
    (tmp_path / "notes").mkdir()


def test_pairs_and_variants_match_longest_baseline_name(tmp_path):
    _layout(tmp_path)
    assert chapters(tmp_path) == ["ch90", "ch91"]
    pairs = {p.name: p for p in discover_pairs("ch90", tmp_path)}
    assert set(pairs) == {"flash", "flash_sdp"}          # a baseline without optimized is no pair
    assert [p.stem for p in pairs["flash"].optimized] == ["optimized_flash"]
    assert [p.stem for p in pairs["flash_sdp"].optimized] == ["optimized_flash_sdp",
                                                              "optimized_flash_sdp_cudnn"]
    assert pairs["flash_sdp"].variant_name(pairs["flash_sdp"].optimized[1]) == "flash_sdp_cudnn"


@pytest.mark.parametrize("spec,names", [
    ("ch90", ["flash", "flash_sdp"]),
    ("ch90:flash_sdp", ["flash_sdp"]),
    ("ch90:flash_sdp,flash", ["flash_sdp", "flash"]),
    ("ch90:flash ch90:flash", ["flash"]),
])
def test_target_strings(tmp_path, spec, names):
    _layout(tmp_path)
    assert [p.name for p in resolve_targets(spec, tmp_path)] == names


def test_unknown_target_lists_available(tmp_path):
    _layout(tmp_path)
    with pytest.raises(TargetError, match=r"unknown target 'ch90:nope'; available: ch90:flash, "
                                          r"ch90:flash_sdp"):
        resolve_targets("ch90:nope", tmp_path)
    with pytest.raises(TargetError, match="no chapter folder 'ch7'.*chapters: ch90, ch91"):
        resolve_targets("ch7", tmp_path)
    with pytest.raises(TargetError, match="no target given"):
        resolve_targets("  ", tmp_path)


def test_real_chapter_has_flash_sdp():
    assert "ch16:flash_sdp" in [p.target for p in resolve_targets("ch16")]
