"""Where a number came from: the facts stored beside every result and expectation.

A number without its date, commit, device, driver, library versions and command is a rumour;
everything aisp writes to disk carries this record (STYLE.md #12).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aisp.hardware import HardwareInfo
from aisp.harness.discovery import REPO_ROOT


def git_sha(root: Path = REPO_ROOT) -> str:
    """HEAD's sha, suffixed '-dirty' when tracked files differ; 'unknown' outside a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m " + Path(argv[0]).parent.name
    return " ".join(shlex.quote(a) for a in argv)


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
