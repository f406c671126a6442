"""The `dockyard` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dockyard: not yet", file=sys.stderr)
    return 2
