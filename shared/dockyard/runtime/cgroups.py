"""A running container's counters, read from its cgroup files: a few small reads, no engine call.

The engine's stats API takes about 2 s a call (it waits for a second CPU reading), so it is
no way to sample many containers every few seconds; the cgroup files are. Both layouts:

- v1 (this project's engine, cgroupfs driver): one directory per controller,
  `<root>/<controller>/docker/<id>/` (or systemd's `system.slice/docker-<id>.scope`).
- v2: one directory, `<root>/system.slice/docker-<id>.scope/` or `<root>/docker/<id>/`.

The engine removes the cgroup as soon as the container stops, so a reading can only come from
while it ran: `read` answers None once the directory is gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from dockyard.core.usage import Counters

ROOT: Final = Path("/sys/fs/cgroup")
_V1_CONTROLLERS: Final = ("cpuacct", "memory", "pids", "blkio", "cpu")


@dataclass(frozen=True)
class Cgroup:
    """Where one container's counters are: one directory per v1 controller, or one v2."""

    version: Literal[1, 2]
    dirs: dict[str, Path]

    def dir(self, controller: str) -> Path:
        return self.dirs[controller] if self.version == 1 else self.dirs["unified"]


def reachable(root: Path = ROOT) -> bool:
    """Whether the engine's cgroups show here at all (same host, cgroupfs mounted). Where they
    do, a container whose directory is missing has stopped: no need to ask the engine."""
    if (root / "cgroup.controllers").exists():
        return (root / "system.slice").is_dir() or (root / "docker").is_dir()
    return any((root / base / "docker").is_dir() for base in ("memory", "pids"))


def locate(container_id: str, root: Path = ROOT) -> Cgroup | None:
    """The container's cgroup, or None where its files are not reachable from here (another
    host's engine, a cgroup parent of the operator's choosing): then use the engine's stats."""
    if (root / "cgroup.controllers").exists():
        for candidate in _v2_candidates(root, container_id):
            if (candidate / "cpu.stat").exists():
                return Cgroup(2, {"unified": candidate})
        return None
    dirs: dict[str, Path] = {}
    for controller in _V1_CONTROLLERS:
        found = next(
            (d for d in _v1_candidates(root, controller, container_id) if d.is_dir()), None
        )
        if found is None:
            return None
        dirs[controller] = found
    return Cgroup(1, dirs)


def _v2_candidates(root: Path, container_id: str) -> list[Path]:
    return [root / "system.slice" / f"docker-{container_id}.scope", root / "docker" / container_id]


def _v1_candidates(root: Path, controller: str, container_id: str) -> list[Path]:
    bases = [root / controller, root / "cpu,cpuacct"] if controller in ("cpu", "cpuacct") else []
    bases = bases or [root / controller]
    return [
        path
        for base in bases
        for path in (
            base / "docker" / container_id,
            base / "system.slice" / f"docker-{container_id}.scope",
        )
    ]


def read(cgroup: Cgroup) -> Counters | None:
    """One reading, or None if the cgroup is gone (the container has stopped) or a file
    says something this reader does not understand (a kernel of another shape)."""
    try:
        return _read_v1(cgroup) if cgroup.version == 1 else _read_v2(cgroup)
    except (OSError, ValueError):
        return None


def any_pid(cgroup: Cgroup) -> int | None:
    """A process of the container (its mount namespace is at /proc/<pid>/root), or None."""
    try:
        text = _text(cgroup.dir("memory" if cgroup.version == 1 else "unified") / "cgroup.procs")
    except OSError:
        return None
    first = text.split("\n", 1)[0].strip()
    return int(first) if first.isdigit() else None


def _read_v1(cg: Cgroup) -> Counters:
    memory, pids, cpu = cg.dir("memory"), cg.dir("pids"), cg.dir("cpu")
    cpu_stat = parse_flat(_text(cpu / "cpu.stat"))
    read_bytes, write_bytes = parse_blkio(
        _text(cg.dir("blkio") / "blkio.throttle.io_service_bytes")
    )
    oom = parse_flat(_text(memory / "memory.oom_control"))
    return Counters(
        cpu_usec=_int(_text(cg.dir("cpuacct") / "cpuacct.usage")) // 1000,
        memory_bytes=_int(_text(memory / "memory.usage_in_bytes")),
        memory_peak=_int(_text(memory / "memory.max_usage_in_bytes")),
        memory_max_events=_int(_text(memory / "memory.failcnt")),
        oom_kills=oom.get("oom_kill", 0),
        pids_current=_int(_text(pids / "pids.current")),
        pids_peak=_optional_int(pids / "pids.peak"),
        pids_max_events=parse_flat(_text(pids / "pids.events")).get("max", 0),
        io_read_bytes=read_bytes,
        io_write_bytes=write_bytes,
        cpu_periods=cpu_stat.get("nr_periods", 0),
        cpu_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cpu_throttled_usec=cpu_stat.get("throttled_time", 0) // 1000,
    )


def _read_v2(cg: Cgroup) -> Counters:
    d = cg.dir("unified")
    cpu_stat = parse_flat(_text(d / "cpu.stat"))
    memory_events = parse_flat(_text(d / "memory.events"))
    read_bytes, write_bytes = parse_io_stat(_optional_text(d / "io.stat"))
    return Counters(
        cpu_usec=cpu_stat.get("usage_usec", 0),
        memory_bytes=_int(_text(d / "memory.current")),
        memory_peak=_optional_int(d / "memory.peak"),
        memory_max_events=memory_events.get("max", 0),
        oom_kills=memory_events.get("oom_kill", 0),
        pids_current=_int(_text(d / "pids.current")),
        pids_peak=_optional_int(d / "pids.peak"),
        pids_max_events=parse_flat(_text(d / "pids.events")).get("max", 0),
        io_read_bytes=read_bytes,
        io_write_bytes=write_bytes,
        cpu_periods=cpu_stat.get("nr_periods", 0),
        cpu_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cpu_throttled_usec=cpu_stat.get("throttled_usec", 0),
    )


def parse_flat(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, pids.events, memory.events, memory.oom_control)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def parse_blkio(text: str) -> tuple[int, int]:
    """v1 `blkio.throttle.io_service_bytes`: `major:minor Read|Write|... bytes` lines."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
    return read, write


def parse_io_stat(text: str) -> tuple[int, int]:
    """v2 `io.stat`: `major:minor rbytes=N wbytes=N rios=N ...` lines, one per device."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if not value.isdigit():
                continue
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_max(text: str) -> int | None:
    """A limit file (`pids.max`, `memory.max`): None for `max` (no limit)."""
    value = text.strip()
    return int(value) if value.isdigit() else None


def _text(path: Path) -> str:
    # os.open/os.read: the cheapest read Python has, and these files are a few bytes.
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode("ascii", "replace")
    finally:
        os.close(fd)


def _optional_text(path: Path) -> str:
    try:
        return _text(path)
    except FileNotFoundError:
        return ""


def _optional_int(path: Path) -> int | None:
    """A file newer kernels have (memory.peak, pids.peak): None where this one has not."""
    try:
        return _int(_text(path))
    except FileNotFoundError:
        return None


def _int(text: str) -> int:
    return int(text.strip() or 0)


def counters_from_stats(stats: dict[str, Any]) -> Counters | None:
    """The engine's stats answer (`GET /containers/{id}/stats?stream=false`) as Counters; None
    for a stopped container's (all zero). On v2 it has no `max_usage`: the peak is sampled."""
    cpu = stats.get("cpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    if not total:
        return None
    throttling = cpu.get("throttling_data") or {}
    memory = stats.get("memory_stats") or {}
    read = write = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value", 0))
        elif op == "write":
            write += int(entry.get("value", 0))
    return Counters(
        cpu_usec=int(total) // 1000,
        memory_bytes=int(memory.get("usage", 0)),
        memory_peak=int(memory["max_usage"]) if memory.get("max_usage") else None,
        memory_max_events=int(memory.get("failcnt", 0)),
        pids_current=int((stats.get("pids_stats") or {}).get("current", 0)),
        io_read_bytes=read,
        io_write_bytes=write,
        cpu_periods=int(throttling.get("periods", 0)),
        cpu_throttled_periods=int(throttling.get("throttled_periods", 0)),
        cpu_throttled_usec=int(throttling.get("throttled_time", 0)) // 1000,
    )
