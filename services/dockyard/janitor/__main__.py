"""`python -m dockyard.janitor [--dry-run] [--once]`: the service on its own (the CLI's
`dockyard janitor` does the same), configured by the contract's environment variables."""

from __future__ import annotations

import argparse
import sys

from dockyard.config import ConfigError, load
from dockyard.janitor.service import run_janitor
from dockyard.process import event_loop
from dockyard.telemetry.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dockyard janitor")
    parser.add_argument("--dry-run", action="store_true", help="list what one sweep would do")
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    args = parser.parse_args(argv)
    configure_logging("janitor")
    try:
        settings = load()
        report = event_loop.run(run_janitor(settings, dry_run=args.dry_run, once=args.once))
    except ConfigError as exc:
        print(f"dockyard janitor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if report is None or report.ok or report.skipped else 1


if __name__ == "__main__":
    sys.exit(main())
