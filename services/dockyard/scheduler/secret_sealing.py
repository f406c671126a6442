"""Secret values sealed at the API's edge, before anything is stored or published.

A job's are sealed for its id. A schedule's template is sealed for the schedule (its tenant
and name: a schedule has no other id) and kept so in the schedules table; each firing opens
it and seals it again for the fired job's id. Sealing per job keeps one rule for the
orchestrator (a job's secrets open with its own id) and lets a key rotation reach schedules:
their jobs are sealed with the newest key whatever key sealed the template.
"""

from __future__ import annotations

import logging

from dockyard.config import ConfigError, Settings
from dockyard.core.spec import JobSpec, SpecError, check_secret_lengths
from dockyard.sealing import (
    KeyFileError,
    KeyRing,
    SealError,
    has_secrets,
    job_scope,
    load_key_ring,
    reseal_spec,
    schedule_scope,
    seal_spec,
)
from dockyard.web.errors import invalid

log = logging.getLogger("dockyard.scheduler")

NO_KEY = (
    "secrets cannot be accepted: this scheduler has no DOCKYARD_SECRETS_KEY to seal them "
    "with, and it never stores a secret in plain text (ask the operator to set it)"
)


def secrets_ring(settings: Settings) -> KeyRing | None:
    """DOCKYARD_SECRETS_KEY's ring (ConfigError naming the file if it is no key); without one,
    a warning: specs with `secrets` are refused."""
    if settings.secrets_key is None:
        log.warning(
            "scheduler.secrets_refused: DOCKYARD_SECRETS_KEY is not set, so specs with "
            "`secrets` are refused (422)",
            extra={"event": "scheduler.secrets_refused"},
        )
        return None
    try:
        return load_key_ring(settings.secrets_key, "scheduler")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def check_sealable(spec: JobSpec, ring: KeyRing | None, prefix: str = "") -> None:
    """422 for secrets this scheduler cannot seal (no key) or would mask badly (too short)."""
    if not has_secrets(spec):
        return
    if ring is None:
        raise invalid(f"{prefix}secrets", NO_KEY)
    try:
        check_secret_lengths(spec, prefix)
    except SpecError as error:
        raise invalid(error.field, error.message) from None


def sealed_for_job(spec: JobSpec, ring: KeyRing | None, job_id: str) -> JobSpec:
    check_sealable(spec, ring)
    return spec if ring is None else seal_spec(spec, ring, job_scope(job_id))


def sealed_for_schedule(spec: JobSpec, ring: KeyRing | None, tenant: str, name: str) -> JobSpec:
    check_sealable(spec, ring, "job.")
    return spec if ring is None else seal_spec(spec, ring, schedule_scope(tenant, name))


def fired_secrets(
    spec: JobSpec, ring: KeyRing | None, tenant: str, name: str, job_id: str
) -> JobSpec:
    """The template's secrets sealed for one fired job; SealError when they do not open, or
    cannot be sealed (no key: not even a template stored before sealing fires in plain text)."""
    if ring is None and has_secrets(spec):
        raise SealError("its secrets cannot be sealed: DOCKYARD_SECRETS_KEY is not set here")
    return reseal_spec(spec, ring, schedule_scope(tenant, name), job_scope(job_id))
