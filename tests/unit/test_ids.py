"""Identifiers: UUIDv7 as RFC 9562 lays it out, time-ordered; fire ids deterministic."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from dockyard.core.ids import fire_job_id, uuid7


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_uuid7_is_a_version_7_uuid_carrying_its_milliseconds(unix_ms: int) -> None:
    text = uuid7(unix_ms)
    parsed = uuid.UUID(text)
    assert str(parsed) == text  # canonical: lower-case hex, hyphens at 8-4-4-4-12
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == unix_ms


def test_uuid7_sorts_by_time_and_does_not_repeat() -> None:
    ids = [uuid7(1_700_000_000_000 + n) for n in range(1000)]
    assert ids == sorted(ids)
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def test_a_fire_has_one_job_id() -> None:
    assert fire_job_id("acme", "nightly", "2026-01-01T00:00:00Z") == fire_job_id(
        "acme", "nightly", "2026-01-01T00:00:00Z"
    )
    assert fire_job_id("acme", "nightly", "2026-01-01T00:00:00Z") != fire_job_id(
        "acme", "nightly", "2026-01-01T00:01:00Z"
    )
