"""CPU time of benchmark processes, read from /proc: what a figure per job or per line costs."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far (this one by default)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_by_command() -> dict[str, float]:
    """CPU seconds so far per command name, over every live process, each counting the
    children it has reaped (so short-lived ones, runc and the containers, are not missed)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        used = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
        totals[name] = totals.get(name, 0.0) + used
    return totals


def busiest(before: dict[str, float], after: dict[str, float], top: int = 8) -> str:
    """The commands that used the most CPU between two `cpu_by_command` readings."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    ranked = sorted(spent.items(), key=lambda item: item[1], reverse=True)[:top]
    return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in ranked if seconds > 0)


def spent(
    before: dict[str, float], after: dict[str, float], names: tuple[str, ...]
) -> dict[str, float]:
    """CPU seconds each of `names` used between two `cpu_by_command` readings."""
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in names}
