"""Events survive the wire, and old schema versions are upcast on read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.core import codec
from dockyard.core.events import EVENT_TYPES, JobSubmitted, Metadata
from dockyard.core.spec import JobSpec
from tests.unit.test_evolve_table import EVENTS


@pytest.mark.parametrize("event", list(EVENTS.values()), ids=list(EVENTS))
def test_every_event_round_trips(event: Any) -> None:
    assert codec.decode(codec.encode(event)) == event


def test_every_event_type_is_covered() -> None:
    assert {type(e) for e in EVENTS.values()} == set(EVENT_TYPES)


@given(st.text(), st.text())
def test_metadata_round_trips(correlation: str, trace: str) -> None:
    event = msgspec.structs.replace(
        EVENTS["job_queued"], meta=Metadata(correlation_id=correlation, traceparent=trace)
    )
    assert codec.decode(codec.encode(event)) == event


def test_unknown_fields_inside_are_tolerated() -> None:
    raw = msgspec.json.decode(codec.encode(EVENTS["job_queued"]))
    raw["added_by_a_newer_writer"] = 1
    assert codec.decode(msgspec.json.encode(raw)) == EVENTS["job_queued"]


def test_an_old_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend v1 of job_claimed called the orchestrator "worker"; v2 renamed it.
    monkeypatch.setitem(codec.CURRENT_VERSION, "job_claimed", 2)

    def rename(payload: dict[str, Any]) -> dict[str, Any]:
        payload["orchestrator"] = payload.pop("worker")
        return payload

    monkeypatch.setitem(codec._UPCASTERS, ("job_claimed", 1), rename)
    old = msgspec.json.decode(codec.encode(EVENTS["job_claimed"]))
    old["worker"] = old.pop("orchestrator")
    event = codec.decode(msgspec.json.encode(old))
    assert event.orchestrator == "o1"  # type: ignore[union-attr]
    assert event.v == 2


def test_register_upcaster_raises_the_current_version() -> None:
    saved = dict(codec.CURRENT_VERSION), dict(codec._UPCASTERS)
    try:
        codec.register_upcaster("job_scheduled", 1)(lambda p: p)
        assert codec.CURRENT_VERSION["job_scheduled"] == 2
    finally:
        codec.CURRENT_VERSION.clear()
        codec.CURRENT_VERSION.update(saved[0])
        codec._UPCASTERS.clear()
        codec._UPCASTERS.update(saved[1])


def test_a_row_stored_before_a_pattern_was_tightened_still_decodes() -> None:
    """F5's `queue: "x\\n"` (and a label key with one): stored by an earlier version, read
    back as it is, so its job's history, view and set-aside still work."""
    old = JobSpec("busybox", queue="x\n", labels={"k\n": "v\x00"})
    event = JobSubmitted(
        event_id="e-1", job_id="j-1", at=datetime(2026, 1, 1, tzinfo=UTC), tenant="t", spec=old
    )
    assert codec.decode(codec.encode(event)) == event
    wrong_type = codec.encode(event).replace(b'"tenant":"t"', b'"tenant":7')
    with pytest.raises(msgspec.ValidationError):
        codec.decode(wrong_type)
