"""`python -m dockyard.log_relay`: the log relay, as `dockyard log-relay` runs it."""

from __future__ import annotations

import contextlib

from dockyard import config
from dockyard.log_relay.service import run_log_relay
from dockyard.process import event_loop
from dockyard.telemetry.logs import configure_logging


def main() -> None:
    configure_logging("log-relay")
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(run_log_relay(config.load()))


if __name__ == "__main__":
    main()
