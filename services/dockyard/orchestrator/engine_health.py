"""Whether this orchestrator's Docker engine answers, and what follows from it.

An orchestrator whose engine is gone must not claim: every job it took would fail with
`container_error` while another orchestrator could have run it. So the claimers wait on
`wait_up` before each batch (which pings if the last answer is over `fresh_s` old), `run`
pings every `period_s`, and the heartbeat, `/readyz` and a gauge carry the state. One warning
per outage, one line when it ends; before claiming resumes, `on_back` reconciles what the
outage left in the engine (as recovery does after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from dockyard.process.cancelling import raise_if_cancelled
from dockyard.runtime.ports import ContainerRuntime, RuntimeUnavailable

log = logging.getLogger("dockyard.orchestrator.engine")

# A healthy engine answers /_ping in milliseconds; one that takes seconds cannot run jobs.
PING_TIMEOUT_S: Final = 2.0
PERIOD_S: Final = 3.0
# A claim batch trusts an answer this recent instead of pinging again.
FRESH_S: Final = 1.0


class EngineHealth:
    def __init__(
        self,
        runtime: ContainerRuntime,
        *,
        on_back: Callable[[], Awaitable[object]] | None = None,
        timeout_s: float = PING_TIMEOUT_S,
        period_s: float = PERIOD_S,
        fresh_s: float = FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self._on_back = on_back
        self._timeout_s = timeout_s
        self._period_s = period_s
        self._fresh_s = fresh_s
        self._clock = clock
        self._checked_at = -math.inf
        self._lock = asyncio.Lock()  # the claimers of several queues share one ping
        self._up = asyncio.Event()
        self._up.set()
        self.error: str | None = None  # why the engine does not answer; None while it does
        self.outages = 0

    @property
    def up(self) -> bool:
        return self.error is None

    async def check(self) -> bool:
        """Ping now; on the way back, reconcile before saying it is up."""
        async with self._lock:
            try:
                await self._runtime.ping(self._timeout_s)
                if self.error is not None:
                    await self._reconcile()
            except RuntimeUnavailable as exc:
                self.mark_down(str(exc))
            else:
                self.mark_up()
            self._checked_at = self._clock()
        return self.up

    async def ready(self) -> bool:
        """Up, by an answer at most `fresh_s` old (pinging if need be)."""
        if self._clock() - self._checked_at >= self._fresh_s:
            await self.check()
        return self.up

    async def wait_up(self, stopping: asyncio.Event) -> bool:
        """True once the engine answers (at once if it does); False if stopping first."""
        while not await self.ready():
            back = asyncio.ensure_future(self._up.wait())
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({back, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                back.cancel()
                stop.cancel()
                await asyncio.gather(back, stop, return_exceptions=True)
            if stopping.is_set():
                return False
        return not stopping.is_set()

    async def run(self) -> None:
        """Ping every period until cancelled, so an outage is seen with nothing to claim."""
        while True:
            raise_if_cancelled()
            await self.check()
            await asyncio.sleep(self._period_s)

    async def _reconcile(self) -> None:
        if self._on_back is None:
            return
        try:
            await self._on_back()
        except RuntimeUnavailable:
            raise  # gone again: still down
        except Exception:  # a reconcile that failed must not keep claims off for good
            log.exception("orchestrator.engine_reconcile_failed")

    def mark_down(self, error: str) -> None:
        """The engine did not answer (`error` says how); logged once per outage."""
        if self.error is None:
            self.outages += 1
            self._up.clear()
            log.warning(
                "orchestrator.engine_down: the Docker engine does not answer, so this "
                "orchestrator claims nothing until it does: %s",
                error,
                extra={"event": "orchestrator.engine_down"},
            )
        self.error = error

    def mark_up(self) -> None:
        if self.error is not None:
            log.warning(
                "orchestrator.engine_back: the Docker engine answers again; claiming resumes",
                extra={"event": "orchestrator.engine_back"},
            )
        self.error = None
        self._up.set()
