"""The job view of the contract: what the API answers, derived from the folded job."""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec, Timestamp
from dockyard.core.state import Job, Status


class JobView(Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    status: Status
    attempt: int
    max_attempts: int
    exit_code: int | None
    reason: Reason | None
    error: str | None
    orchestrator: str | None
    created_at: Timestamp
    queued_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    spec: JobSpec
    version: int


MASK = "***"


def masked_spec(spec: JobSpec) -> JobSpec:
    """The spec as shown to people: secret env values are `***` (only the orchestrator, which
    reads the events, sees the real ones)."""
    if not spec.secrets:
        return spec
    secret = set(spec.secrets)
    return replace(spec, env={k: MASK if k in secret else v for k, v in spec.env.items()})


def job_view(job: Job) -> JobView:
    succeeded = job.status == "succeeded"
    return JobView(
        id=job.id,
        tenant=job.tenant,
        status=job.status,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        exit_code=job.exit_code,
        # A retried attempt's reason stays visible until the next attempt ends.
        reason=None if succeeded else job.reason,
        error=None if succeeded else job.error,
        orchestrator=job.orchestrator,
        created_at=job.created_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        spec=masked_spec(job.spec),
        version=job.version,
    )
