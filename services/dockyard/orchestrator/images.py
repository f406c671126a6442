"""Images before a create: `pull` policy per the spec, with the engine's inspect skipped when
this orchestrator saw the image a moment ago (it is on the path of every dispatch).

The registry is checked against DOCKYARD_ALLOWED_REGISTRIES again here, before the engine is
asked (a job stored under another policy, or by another scheduler). A failed pull tells the
tenant only which registry and whether the image was not found, refused or unreachable: the
engine's own text can carry what a registry or a probed port answered (security review F13),
so it goes to the operator's log alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from dockyard.core.registries import RegistryPolicy, registry_of
from dockyard.core.spec import PullPolicy
from dockyard.runtime.ports import ContainerRuntime, ImagePullFailed

log = logging.getLogger("dockyard.orchestrator")

MAX_REMEMBERED = 1024

# What the engine's words mean, for the tenant (Docker 20.10 through 28: the registry's error
# code, the Go HTTP client's error, or both). Looked for in order.
_WHY: Final = (
    ("not found or unauthorized", ("pull access denied",)),
    ("unauthorized", ("unauthorized", "no basic auth credentials", "authentication required")),
    ("unauthorized", ("denied", "forbidden")),
    ("not found", ("manifest unknown", "name unknown", "not found", "does not exist")),
    ("not found", ("no such image",)),
    ("not done in time", ("not done after",)),  # Dockyard's own pull timeout
    (
        "unreachable",
        (
            "dial tcp",
            "connection refused",
            "no such host",
            "timeout",
            "network is unreachable",
            "connection reset",
            "tls:",
            "x509:",
            "http response to https client",
            "eof",
        ),
    ),
)


def pull_failure_words(engine_text: str) -> str:
    """not found / unauthorized / unreachable (or that the answer was unexpected)."""
    lowered = engine_text.lower()
    for words, marks in _WHY:
        if any(mark in lowered for mark in marks):
            return words
    return "the registry's answer was unexpected (the orchestrator's log has it)"


class Images:
    def __init__(
        self,
        runtime: ContainerRuntime,
        *,
        registries: RegistryPolicy | None = None,
        fresh_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self._registries = registries or RegistryPolicy()
        self._fresh_s = fresh_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # ref -> when it was last known present

    def fresh(self, ref: str, policy: PullPolicy) -> bool:
        """True when `ensure` would have nothing to do (the dispatch path skips it then)."""
        return policy != "always" and self._known(ref)

    async def ensure(self, ref: str, policy: PullPolicy, *, job: str | None = None) -> None:
        """Per `policy`; raises ImagePullFailed in words for the tenant (see above). `job`
        names the job in the operator's log line."""
        if self.fresh(ref, policy):
            return
        registry = registry_of(ref)
        refused = self._registries.refusal(ref)
        if refused is not None:
            why = f"not allowed: {refused} (DOCKYARD_ALLOWED_REGISTRIES)"
            raise ImagePullFailed(f"image could not be pulled from {registry}: {why}")
        try:
            await self._runtime.ensure_image(ref, policy)
        except ImagePullFailed as exc:
            if policy == "never":
                raise  # nothing was pulled: the words are Dockyard's own
            log.warning(
                "orchestrator.image_pull_failed job=%s image=%s registry=%s engine=%s",
                job,
                ref,
                registry,
                exc.message,
                extra={"event": "orchestrator.image_pull_failed", "job": job, "image": ref},
            )
            words = pull_failure_words(exc.message)
            raise ImagePullFailed(f"image could not be pulled from {registry}: {words}") from None
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
