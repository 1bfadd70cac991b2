"""`python -m cli.aisp ...` from the repository root, without installing: delegates to aisp.cli."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
