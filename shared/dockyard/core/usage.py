"""What an attempt used, and which of its limits it ran into: values, judgements and words.

Pure: the orchestrator reads the counters (runtime.cgroups) and passes them in; the fold
keeps the latest figures (core.state); the job view shows them (core.view).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from msgspec import Struct

from dockyard.core.spec import JobSpec, container_share

MIB: Final = 1024 * 1024
# "At the limit": a peak within this fraction of it (the kernel reclaims just below it).
AT_LIMIT: Final = 0.98
# CPU "throttled" when more than this share of the scheduler's periods were throttled.
THROTTLED_SHARE: Final = 0.5
DISK_PREFIX: Final = "disk:"


class Usage(Struct, frozen=True, kw_only=True):
    """The contract's `usage`: CPU and throttling in seconds, memory and I/O in MiB."""

    cpu_s: float = 0.0
    memory_peak_mb: float = 0.0
    pids_peak: int = 0
    io_read_mb: float = 0.0
    io_write_mb: float = 0.0
    cpu_throttled_s: float = 0.0


class Counters(Struct, frozen=True, kw_only=True):
    """One reading of a container's counters, in the kernel's units (bytes, microseconds).

    `memory_peak` is the kernel's own peak where it keeps one (v1 max_usage_in_bytes, v2
    memory.peak), else None; `memory_max_events` counts the times usage hit the limit
    (v1 failcnt, v2 memory.events max); `pids_max_events` the forks the PID limit refused.
    """

    cpu_usec: int = 0
    memory_bytes: int = 0
    memory_peak: int | None = None
    memory_max_events: int = 0
    oom_kills: int = 0
    pids_current: int = 0
    pids_peak: int | None = None
    pids_max_events: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_usec: int = 0


class Limits(Struct, frozen=True, kw_only=True):
    """The limits the job container runs under."""

    memory_mb: int
    pids: int
    cpus: float

    @classmethod
    def of_job(cls, spec: JobSpec) -> Limits:
        """The job container's share of the spec's resources (its sidecars get the rest)."""
        share = container_share(spec)
        return cls(memory_mb=share.memory_mb, pids=share.pids, cpus=share.cpus)


def usage_of(counters: Counters, peaks: Usage | None = None) -> Usage:
    """The figures of a reading, peaks never below what earlier readings saw (`peaks`)."""
    memory_peak = max(counters.memory_peak or 0, counters.memory_bytes)
    pids_peak = max(counters.pids_peak or 0, counters.pids_current)
    usage = Usage(
        cpu_s=round(counters.cpu_usec / 1e6, 3),
        memory_peak_mb=round(memory_peak / MIB, 1),
        pids_peak=pids_peak,
        io_read_mb=round(counters.io_read_bytes / MIB, 1),
        io_write_mb=round(counters.io_write_bytes / MIB, 1),
        cpu_throttled_s=round(counters.cpu_throttled_usec / 1e6, 3),
    )
    return usage if peaks is None else higher(usage, peaks)


def higher(usage: Usage, seen: Usage) -> Usage:
    """Each figure the greater of the two: counters and peaks only ever grow in one run."""
    return Usage(
        cpu_s=max(usage.cpu_s, seen.cpu_s),
        memory_peak_mb=max(usage.memory_peak_mb, seen.memory_peak_mb),
        pids_peak=max(usage.pids_peak, seen.pids_peak),
        io_read_mb=max(usage.io_read_mb, seen.io_read_mb),
        io_write_mb=max(usage.io_write_mb, seen.io_write_mb),
        cpu_throttled_s=max(usage.cpu_throttled_s, seen.cpu_throttled_s),
    )


def limits_hit(counters: Counters, usage: Usage, limits: Limits) -> tuple[str, ...]:
    """The limits this reading shows were reached (disk is judged apart: see `disk_hit`)."""
    hit: list[str] = []
    at_memory = usage.memory_peak_mb >= limits.memory_mb * AT_LIMIT
    if counters.oom_kills > 0 or counters.memory_max_events > 0 or at_memory:
        hit.append("memory")
    if counters.pids_max_events > 0 or usage.pids_peak >= limits.pids:
        hit.append("pids")
    periods = counters.cpu_periods
    if periods > 0 and counters.cpu_throttled_periods > periods * THROTTLED_SHARE:
        hit.append("cpu")
    return tuple(hit)


def disk_hit(path: str) -> str:
    return f"{DISK_PREFIX}{path}"


def merged(*groups: Iterable[str]) -> tuple[str, ...]:
    """Limits hit so far: once reached, a limit stays named; in a stable order."""
    return tuple(sorted({hit for group in groups for hit in group}, key=_order))


def _order(hit: str) -> tuple[int, str]:
    ranks = {"memory": 0, "pids": 1, "cpu": 2}
    return (ranks.get(hit, 3), hit)


def limit_words(
    hits: Iterable[str], limits: Limits, disk_mb: Mapping[str, int] | None = None
) -> str:
    """The limits reached, in a sentence for the job's owner ('' when none was)."""
    phrases = [_phrase(hit, limits, disk_mb or {}) for hit in hits]
    return "; ".join(phrases)


def _phrase(hit: str, limits: Limits, disk_mb: Mapping[str, int]) -> str:
    if hit == "memory":
        return f"the job reached its memory limit of {limits.memory_mb} MiB"
    if hit == "pids":
        return f"the job reached its limit of {limits.pids} processes (fork failed)"
    if hit == "cpu":
        return f"the job was held to its {limits.cpus:g} CPUs for most of its run"
    path = hit.removeprefix(DISK_PREFIX)
    size = disk_mb.get(path)
    return f"{path} is full (its size is {size} MiB)" if size else f"{path} is full"
