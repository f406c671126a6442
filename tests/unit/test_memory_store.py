"""The event store contract, held against the in-memory store; and the job view's shape."""

from __future__ import annotations

import pytest

from dockyard.store.memory import InMemoryEventStore
from dockyard.store.read_model import decode_cursor, encode_cursor, job_view
from tests.support.store_contract import T0, EventStoreContract, History


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def memory(self) -> InMemoryEventStore:
        return InMemoryEventStore()

    @pytest.fixture
    def store(self, memory: InMemoryEventStore) -> InMemoryEventStore:
        return memory

    @pytest.fixture
    def views(self, memory: InMemoryEventStore) -> InMemoryEventStore:
        return memory


def test_job_view_has_exactly_the_contract_fields() -> None:
    history = History()
    history.submit(labels={"a": "b"})
    view = job_view(history.view())
    assert list(view) == [
        "id",
        "tenant",
        "status",
        "attempt",
        "max_attempts",
        "exit_code",
        "reason",
        "error",
        "orchestrator",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "spec",
        "version",
        "usage",
        "limits_hit",
    ]
    assert (view["usage"], view["limits_hit"]) == (None, [])  # not started yet
    assert view["created_at"] == "2026-03-01T12:00:00Z"
    assert view["queued_at"] == "2026-03-01T12:00:00Z"
    assert view["started_at"] is None
    assert (view["status"], view["attempt"], view["max_attempts"], view["version"]) == (
        "queued",
        1,
        1,
        2,
    )
    assert view["spec"]["image"] == "busybox"
    assert view["spec"]["labels"] == {"a": "b"}


def test_cursor_round_trips_to_the_microsecond() -> None:
    at = T0.replace(microsecond=123456)
    job = "0190f0c2-0000-7000-8000-000000000001"
    assert decode_cursor(encode_cursor(at, job)) == (at, job)
