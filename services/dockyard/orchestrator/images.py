"""Images before a create: `pull` policy per the spec, with the engine's inspect skipped when
this orchestrator saw the image a moment ago (it is on the path of every dispatch)."""

from __future__ import annotations

import time
from collections.abc import Callable

from dockyard.core.spec import PullPolicy
from dockyard.runtime.ports import ContainerRuntime

MAX_REMEMBERED = 1024


class Images:
    def __init__(
        self,
        runtime: ContainerRuntime,
        *,
        fresh_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self._fresh_s = fresh_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # ref -> when it was last known present

    def fresh(self, ref: str, policy: PullPolicy) -> bool:
        """True when `ensure` would have nothing to do (the dispatch path skips it then)."""
        return policy != "always" and self._known(ref)

    async def ensure(self, ref: str, policy: PullPolicy) -> None:
        """Per `policy`; raises ImagePullFailed with the engine's words."""
        if self.fresh(ref, policy):
            return
        await self._runtime.ensure_image(ref, policy)
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()  # a cache, not a record: bounded whatever the jobs ask for
        self._seen[ref] = self._clock()

    def forget(self, ref: str) -> None:
        """The engine said the image is missing after all (someone removed it)."""
        self._seen.pop(ref, None)

    def _known(self, ref: str) -> bool:
        seen = self._seen.get(ref)
        if seen is None:
            return False
        if self._clock() - seen > self._fresh_s:
            del self._seen[ref]
            return False
        return True
