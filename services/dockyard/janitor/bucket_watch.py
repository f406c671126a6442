"""Whether a missing heartbeat key may be taken for an orchestrator's silence.

A key of the heartbeat bucket disappears `DOCKYARD_LEASE_S` after its last write, and every
replica of a clustered bucket ages its copy out by itself. While the bucket has no leader (a
NATS cluster electing, the leader cut off from the others) nobody can write to it, so every
orchestrator's key ages out at once though they all beat on, and marking them lost would
end or rerun every running job. So missing keys are judged only once the bucket has had the
same leader for a whole lease: every orchestrator then had a lease to write again.

On first sight there is nothing known against the bucket: judging starts at once (a janitor
restarted mid-outage sees the leader change, or no leader, and waits from there).
"""

from __future__ import annotations

STANDALONE = "-"  # the leader of a bucket on a server that is not clustered


class BucketWatch:
    def __init__(self, lease_s: float) -> None:
        self._lease_s = lease_s
        self._leader: str | None = None
        self._steady_from: float | None = None  # when the current leader was first seen
        self._seen = False

    def why_not(self, leader: str | None, now: float) -> str | None:
        """None if missing keys may be judged at `now` (seconds, monotonic), the bucket led by
        `leader` (None: none, or it could not be asked); else why not, for a person."""
        if leader is None:
            self._seen, self._leader, self._steady_from = True, None, None
            return "the heartbeat bucket has no leader (the NATS cluster electing, or cut off)"
        if not self._seen:
            self._seen, self._leader, self._steady_from = True, leader, now - self._lease_s
        elif leader != self._leader or self._steady_from is None:
            self._leader, self._steady_from = leader, now
        waited = now - self._steady_from
        if waited < self._lease_s:
            return (
                f"the heartbeat bucket has been led by {leader} for {waited:.0f} s only: "
                f"orchestrators get a whole lease ({self._lease_s:g} s) to beat again"
            )
        return None
