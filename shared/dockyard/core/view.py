"""The job view of the contract: what the API answers, derived from the folded job."""

from __future__ import annotations

from typing import TypeVar

from msgspec import Struct
from msgspec.structs import fields, replace

from dockyard.core.events import EventBase
from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec, Sidecar, Timestamp
from dockyard.core.state import Job, Status
from dockyard.core.usage import Usage

E = TypeVar("E", bound=EventBase)


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
    # The last attempt's figures: null until its container starts, final once it ends.
    usage: Usage | None = None
    limits_hit: list[str] = []


MASK = "***"


def masked_spec(spec: JobSpec) -> JobSpec:
    """The spec as shown to people: the values of the env keys named in `secrets`, the job's
    and each sidecar's, are `***` (only the orchestrator, which reads the events, sees the
    real ones). Every answer that carries a spec shows it through here."""
    if not spec.secrets and not any(sidecar.secrets for sidecar in spec.sidecars):
        return spec
    return replace(
        spec,
        env=_masked_env(spec.env, spec.secrets),
        sidecars=tuple(_masked_sidecar(sidecar) for sidecar in spec.sidecars),
    )


def _masked_sidecar(sidecar: Sidecar) -> Sidecar:
    if not sidecar.secrets:
        return sidecar
    return replace(sidecar, env=_masked_env(sidecar.env, sidecar.secrets))


def _masked_env(env: dict[str, str], secrets: tuple[str, ...]) -> dict[str, str]:
    secret = set(secrets)
    return {key: MASK if key in secret else value for key, value in env.items()}


def masked_event(event: E) -> E:
    """The event as shown to people: a spec it carries (`job_submitted`'s) is masked."""
    specs = {
        field.name: masked_spec(value)
        for field in fields(event)
        if isinstance(value := getattr(event, field.name), JobSpec)
    }
    return replace(event, **specs) if specs else event


def secret_values(spec: JobSpec) -> list[str]:
    """The values to mask in the job's log: the job's secrets and its sidecars'."""
    values = [spec.env[key] for key in spec.secrets if key in spec.env]
    for sidecar in spec.sidecars:
        values += [sidecar.env[key] for key in sidecar.secrets if key in sidecar.env]
    return values


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
        usage=job.usage,
        limits_hit=list(job.limits_hit),
    )
