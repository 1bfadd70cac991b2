"""Compare every ch16 baseline/optimized pair on this machine: `python ch16/compare.py --profile none`.

The book's first command. It is `aisp bench run --targets ch16` with the same flags (--profile,
--iterations, --warmup, --json, --update-expectations, ...); `--targets ch16:flash_sdp` narrows it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
    targets = [] if any(a == "--targets" or a.startswith("--targets=") for a in args) \
        else ["--targets", "ch16"]
    main(["bench", "run", *targets, *args], prog_name="compare.py")
