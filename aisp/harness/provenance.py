"""Where a number came from: the facts stored beside every result and expectation.

A number without its date, commit, device, driver, library versions and command is a rumour;
everything aisp writes to disk carries this record (STYLE.md #12).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisp.harness.discovery import REPO_ROOT

if TYPE_CHECKING:  # keeps this module free of torch, so torch-free tools (the load tester) use it
    from aisp.hardware import HardwareInfo


def git_sha(root: Path = REPO_ROOT) -> str:
    """HEAD's sha, suffixed '-dirty' when tracked files differ.

    AISP_GIT_SHA, when set, names the commit a copied tree was made from and wins: a copy sent
    to a remote GPU machine may carry a stale .git whose HEAD is some older commit (seen on the
    H200: an old sha, '-dirty'). Without either, 'unknown'.
    """
    named = os.environ.get("AISP_GIT_SHA")
    if named:
        return named
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                           capture_output=True, text=True, timeout=10)
        sha = r.stdout.strip() if r.returncode == 0 else ""
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    """The command as the user would retype it (module runs shown as `python -m ...`)."""
    argv = list(sys.argv)
    if argv:
        head = Path(argv[0])
        if head.name == "__main__.py":
            argv[0] = "python -m " + head.parent.name
        elif head.parts[-2:] == ("cli", "aisp.py"):
            argv[0] = "python -m cli.aisp"
        elif head.is_absolute():
            try:
                argv[0] = "python " + str(head.relative_to(REPO_ROOT))
            except ValueError:
                pass
    return " ".join(argv[:1] + [shlex.quote(a) for a in argv[1:]])


def provenance(info: HardwareInfo, command: str | None = None) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_sha": git_sha(),
        "hardware_key": info.key,
        "device": info.name,
        "device_count": info.device_count,
        "compute_capability": list(info.compute_capability) if info.compute_capability else None,
        "driver": info.driver_version,
        "cuda": info.cuda_version,
        "torch": info.torch_version,
        "triton": info.triton_version,
        "python": info.python_version,
        "cpu": info.cpu_model,
        "command": command or command_line(),
    }
