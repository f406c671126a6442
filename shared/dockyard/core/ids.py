"""Identifiers: time-ordered UUIDs (version 7) for jobs and events, deterministic ones for fires."""

from __future__ import annotations

import os
import time
import uuid

_FIRES = uuid.UUID("6f1e1a52-9d7c-4a53-8d0e-64f6c6b8a0d1")


def uuid7(unix_ms: int | None = None) -> str:
    """RFC 9562 UUIDv7: sorts by creation time, so ids index well and list newest-first."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    # Formatted by hand: uuid.UUID's checks cost more than the rest (a dozen ids a job).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def fire_job_id(tenant: str, schedule: str, fire_time_iso: str) -> str:
    """The one job id of a schedule's fire time: two schedulers firing it contend on one job."""
    return str(uuid.uuid5(_FIRES, f"{tenant}\x00{schedule}\x00{fire_time_iso}"))
