"""The operator's defaults and maxima for a job's resources and timeout, pure.

The values come in from the scheduler's settings, never from the environment here. A job's
stored spec holds the defaults it got at submit, so a later change of a setting never changes
an existing job; a schedule keeps which fields its spec left out and gets the defaults of the
day each time it fires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from msgspec import Struct
from msgspec.structs import replace

from dockyard.core.spec import JobSpec, SpecError

# The fields an operator bounds, as `details.field` names them.
CPUS: Final = "resources.cpus"
MEMORY_MB: Final = "resources.memory_mb"
PIDS: Final = "resources.pids"
TIMEOUT_S: Final = "timeout_s"
BOUNDED: Final = (CPUS, MEMORY_MB, PIDS, TIMEOUT_S)
_RESOURCE_KEYS: Final = {CPUS: "cpus", MEMORY_MB: "memory_mb", PIDS: "pids"}


class SpecBounds(Struct, frozen=True, kw_only=True):
    """What a spec that leaves a field out gets, and the most it may ask for (None: no cap)."""

    default_cpus: float = 1.0
    default_memory_mb: int = 512
    default_pids: int = 256
    default_timeout_s: float = 3600.0
    max_cpus: float | None = None
    max_memory_mb: int | None = None
    max_pids: int | None = None
    max_timeout_s: float | None = None

    def default(self, field: str) -> float:
        return {
            CPUS: self.default_cpus,
            MEMORY_MB: self.default_memory_mb,
            PIDS: self.default_pids,
            TIMEOUT_S: self.default_timeout_s,
        }[field]

    def maximum(self, field: str) -> float | None:
        return {
            CPUS: self.max_cpus,
            MEMORY_MB: self.max_memory_mb,
            PIDS: self.max_pids,
            TIMEOUT_S: self.max_timeout_s,
        }[field]


# The contract's defaults and no maxima: what the scheduler applies when nothing is set.
BUILT_IN: Final = SpecBounds()


def left_out(job: Mapping[str, object]) -> tuple[str, ...]:
    """The bounded fields a spec as written (parsed JSON, before decoding) does not give."""
    resources = job.get("resources")
    given = resources if isinstance(resources, Mapping) else {}
    out = [field for field, key in _RESOURCE_KEYS.items() if key not in given]
    if TIMEOUT_S not in job:
        out.append(TIMEOUT_S)
    return tuple(out)


def with_defaults(spec: JobSpec, fields: Iterable[str], bounds: SpecBounds) -> JobSpec:
    """`spec` with the operator's default in each of `fields` (those it left out)."""
    fields = set(fields)
    resources = replace(
        spec.resources,
        **{key: bounds.default(field) for field, key in _RESOURCE_KEYS.items() if field in fields},
    )
    timeout_s = bounds.default_timeout_s if TIMEOUT_S in fields else spec.timeout_s
    return replace(spec, resources=resources, timeout_s=timeout_s)


def check_maxima(spec: JobSpec, bounds: SpecBounds) -> None:
    """SpecError naming the first field over its maximum, with `max` in its details."""
    asked = {
        CPUS: spec.resources.cpus,
        MEMORY_MB: spec.resources.memory_mb,
        PIDS: spec.resources.pids,
        TIMEOUT_S: spec.timeout_s,
    }
    for field in BOUNDED:
        maximum = bounds.maximum(field)
        if maximum is not None and asked[field] > maximum:
            raise SpecError(
                field,
                f"{asked[field]:g} is over this installation's maximum of {maximum:g}",
                {"max": maximum},
            )
