"""Secret env values, the job's and its sidecars', are `***` wherever a spec is shown
(security review F4); only the orchestrator, reading the events, gets the real ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from dockyard.core.events import EVENT_TYPES, JobQueued, JobSubmitted
from dockyard.core.spec import JobSpec, SpecError, convert_spec
from dockyard.core.view import MASK, masked_event, masked_spec, secret_values
from dockyard.scheduler.schedules import parse_schedule, view

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SECRET = "s3cr3t-VALUE"
SIDECAR_SECRET = "sidecar-s3cr3t"


def body() -> dict[str, Any]:
    return {
        "image": "app",
        "env": {"TOKEN": SECRET, "A": "b"},
        "secrets": ["TOKEN"],
        "sidecars": [
            {"name": "cache", "image": "redis", "env": {"MODE": "x"}},
            {
                "name": "db",
                "image": "postgres",
                "env": {"POSTGRES_PASSWORD": SIDECAR_SECRET, "POSTGRES_DB": "app"},
                "secrets": ["POSTGRES_PASSWORD"],
            },
        ],
    }


def test_the_job_and_sidecar_secrets_are_masked_and_nothing_else() -> None:
    spec = convert_spec(body())
    shown = masked_spec(spec)
    assert shown.env == {"TOKEN": MASK, "A": "b"}
    assert shown.sidecars[0] == spec.sidecars[0]
    assert shown.sidecars[1].env == {"POSTGRES_PASSWORD": MASK, "POSTGRES_DB": "app"}
    assert shown.sidecars[1].secrets == ("POSTGRES_PASSWORD",)
    assert spec.sidecars[1].env["POSTGRES_PASSWORD"] == SIDECAR_SECRET  # the original is kept
    encoded = msgspec.json.encode(shown)
    assert SECRET.encode() not in encoded and SIDECAR_SECRET.encode() not in encoded


def test_a_sidecar_secret_alone_is_masked() -> None:
    spec = convert_spec({**body(), "env": {}, "secrets": []})
    assert masked_spec(spec).sidecars[1].env["POSTGRES_PASSWORD"] == MASK


def test_a_spec_without_secrets_is_shown_as_it_is() -> None:
    spec = convert_spec({"image": "app", "env": {"A": "b"}})
    assert masked_spec(spec) is spec


def test_a_sidecar_secret_must_name_a_key_of_that_sidecars_env() -> None:
    spec = body()
    spec["sidecars"][1]["secrets"] = ["POSTGRES_PASSWORD", "MODE"]  # MODE is cache's
    with pytest.raises(SpecError) as error:
        convert_spec(spec)
    assert error.value.field == "sidecars[1].secrets"
    assert "MODE" in error.value.message


def test_the_submitted_event_is_masked_and_other_events_are_untouched() -> None:
    spec = convert_spec(body())
    submitted = JobSubmitted(event_id="e1", job_id="j1", at=NOW, tenant="acme", spec=spec)
    shown = masked_event(submitted)
    assert shown.spec == masked_spec(spec) and shown.tenant == "acme"
    assert SECRET.encode() not in msgspec.json.encode(shown)
    queued = JobQueued(event_id="e2", job_id="j1", at=NOW, attempt=1, queue="default")
    assert masked_event(queued) is queued


def test_only_the_submitted_event_carries_a_spec() -> None:
    """masked_event masks a spec held by an event's own field: none is nested deeper."""
    carriers = {
        cls
        for cls in EVENT_TYPES
        for field in msgspec.structs.fields(cls)
        if "JobSpec" in str(field.type)
    }
    assert carriers == {JobSubmitted}


def test_the_log_masks_the_job_and_sidecar_secrets() -> None:
    assert sorted(secret_values(convert_spec(body()))) == sorted([SECRET, SIDECAR_SECRET])


def test_the_schedule_view_masks_the_job_and_sidecar_secrets() -> None:
    raw = msgspec.json.encode({"name": "n", "interval_s": 60, "job": body()})
    schedule = parse_schedule(raw, "acme", NOW)
    assert schedule.job.env["TOKEN"] == SECRET  # the jobs it makes get the real value
    encoded = msgspec.json.encode(view(schedule))
    assert SECRET.encode() not in encoded and SIDECAR_SECRET.encode() not in encoded
    assert view(schedule).job == masked_spec(schedule.job)


def test_masking_keeps_a_valid_spec() -> None:
    """The masked spec is still a spec (the job view's schema holds)."""
    shown = msgspec.json.encode(masked_spec(convert_spec(body())))
    assert isinstance(msgspec.json.decode(shown, type=JobSpec), JobSpec)
