"""The engine names of what one attempt creates: deterministic, so they can be checked.

The runtime creates containers and networks under these names, and the ledger holds them;
`decide` refuses any other name for a job and attempt, so nobody can put a container that is
not the attempt's own (say `dockyard-postgres-1`) in the ledger for the janitor to remove.

Every part is already a valid Docker name: job ids are UUIDs and sidecar names lower-case
letters, digits and `-` (see `dockyard.core.spec`), so a name is the very string the engine
lists (without the `/` it puts in front of container names), and never an id prefix (it is
not hexadecimal), which the engine would also resolve.
"""

from __future__ import annotations

from collections.abc import Iterable

from dockyard.core.events import ResourceKind

PREFIX = "dockyard"


def container_name(job_id: str, attempt: int, sidecar: str | None = None) -> str:
    """Deterministic, so a second create for the same attempt fails instead of running twice."""
    base = f"{PREFIX}-{job_id}-{attempt}"
    return base if sidecar is None else f"{base}-{sidecar}"


def network_name(job_id: str, attempt: int) -> str:
    return f"{PREFIX}-{job_id}-{attempt}-net"


def attempt_names(
    job_id: str, attempt: int, sidecars: Iterable[str] = ()
) -> dict[ResourceKind, frozenset[str]]:
    """Every name one attempt's resources can have, by ledger kind: the job container, one
    container per sidecar of the spec, and the network."""
    return {
        "container": frozenset({container_name(job_id, attempt)}),
        "sidecar": frozenset(container_name(job_id, attempt, s) for s in sidecars),
        "network": frozenset({network_name(job_id, attempt)}),
    }


def is_attempt_name(
    kind: ResourceKind, name: str, job_id: str, attempt: int, sidecars: Iterable[str] = ()
) -> bool:
    """Whether `name` is a name Dockyard gives a resource of this kind, job and attempt."""
    return name in attempt_names(job_id, attempt, sidecars)[kind]
