"""`make run`: the main job on an embedded default.

Until the daemon lands this profiles the shipped models on this device and
prints the model x backend table (the N models x M platforms comparison).
"""

from __future__ import annotations

import sys

from edged.cli import main as cli_main


def main() -> int:
    return cli_main(["profile"])


if __name__ == "__main__":
    sys.exit(main())
