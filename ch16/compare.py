"""Compare every ch16 baseline/optimized pair on this machine: `python ch16/compare.py --profile none`.

The book's first command. It is `aisp bench run --targets ch16` with the same flags (--profile,
--iterations, --warmup, --json, --update-expectations, ...); `--targets ch16:flash_sdp` narrows it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.cli import script_main  # noqa: E402

if __name__ == "__main__":
    script_main("ch16", "every pair of the chapter", sys.argv[1:], "compare.py", __doc__)
