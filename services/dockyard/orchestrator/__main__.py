"""`python -m dockyard.orchestrator`: the service on its own (the CLI's `dockyard orchestrator`
does the same), configured by the contract's environment variables."""

from __future__ import annotations

import logging
import sys

from dockyard.config import ConfigError, load
from dockyard.orchestrator.service import run_orchestrator
from dockyard.process import event_loop


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load()
    except ConfigError as exc:
        print(f"dockyard orchestrator: {exc}", file=sys.stderr)
        return 2
    event_loop.run(run_orchestrator(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
