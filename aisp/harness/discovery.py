"""Find chapters, pairs and variants, and parse target strings.

Layout rules:
- a chapter is a folder named `ch<digits>` under the repository root;
- a pair is `baseline_<name>.py` with `optimized_<name>.py`; `optimized_<name>_<suffix>.py`
  files are further variants of the same pair (matched to the longest baseline name);
- a target string is `ch16` (every pair), `ch16:flash_sdp`, or `ch16:flash_sdp,paged_attention`.

Modules are imported from their file paths under unique names, with the repository root on
sys.path so that `import aisp` works whether or not the package is installed.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
_CHAPTER = re.compile(r"^ch\d+$")


class TargetError(ValueError):
    """A target string that names nothing; the message lists what exists."""


@dataclass(frozen=True)
class Pair:
    chapter: str
    name: str
    baseline: Path
    optimized: tuple[Path, ...] = field(default_factory=tuple)  # main first, then variants

    @property
    def target(self) -> str:
        return f"{self.chapter}:{self.name}"

    def variant_name(self, path: Path) -> str:
        """'flash_sdp' for optimized_flash_sdp.py, 'flash_sdp_cudnn' for a variant."""
        return path.stem[len("optimized_"):]


def chapters(root: Path | None = None) -> list[str]:
    root = root or REPO_ROOT
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _CHAPTER.match(p.name))


def discover_pairs(chapter: str, root: Path | None = None) -> list[Pair]:
    root = root or REPO_ROOT
    folder = root / chapter
    if not folder.is_dir():
        raise TargetError(f"no chapter folder '{chapter}' under {root}; "
                          f"chapters: {', '.join(chapters(root)) or 'none'}")
    baselines = {p.stem[len("baseline_"):]: p for p in folder.glob("baseline_*.py")}
    optimized: dict[str, list[Path]] = {name: [] for name in baselines}
    # Longest names first, so 'flash_sdp_x' is not claimed by a shorter pair 'flash'.
    by_length = sorted(baselines, key=len, reverse=True)
    for opt in sorted(folder.glob("optimized_*.py")):
        rest = opt.stem[len("optimized_"):]
        owner = next((n for n in by_length if rest == n or rest.startswith(n + "_")), None)
        if owner is not None:
            optimized[owner].append(opt)
    pairs = []
    for name in sorted(baselines):
        opts = sorted(optimized[name], key=lambda p: (p.stem != f"optimized_{name}", p.stem))
        if opts:
            pairs.append(Pair(chapter, name, baselines[name], tuple(opts)))
    return pairs


def resolve_targets(spec: str, root: Path | None = None) -> list[Pair]:
    """Parse 'ch16', 'ch16:a', 'ch16:a,b' or several of these separated by spaces/semicolons."""
    if not spec or not spec.strip():
        raise TargetError("no target given; try 'ch16' or 'ch16:flash_sdp'")
    selected: list[Pair] = []
    for part in re.split(r"[\s;]+", spec.strip()):
        chapter, _, names = part.partition(":")
        pairs = discover_pairs(chapter, root)
        if not names:
            selected.extend(pairs)
            continue
        by_name = {p.name: p for p in pairs}
        for name in filter(None, names.split(",")):
            if name not in by_name:
                available = ", ".join(p.target for p in pairs) or "none"
                raise TargetError(f"unknown target '{chapter}:{name}'; available: {available}")
            selected.append(by_name[name])
    seen, unique = set(), []
    for p in selected:
        if p.target not in seen:
            seen.add(p.target)
            unique.append(p)
    return unique


def load_module(path: Path) -> ModuleType:
    """Import a chapter file by path under a unique module name."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    mod_name = f"aisp_target_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "get_benchmark"):
        raise TargetError(f"{path} has no get_benchmark() function")
    return module


def load_benchmarks(path: Path) -> list:
    """`get_benchmark()` may return one benchmark or a list (one per workload size)."""
    result = load_module(path).get_benchmark()
    return list(result) if isinstance(result, (list, tuple)) else [result]
