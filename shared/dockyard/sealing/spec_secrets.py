"""Sealing and opening the secret values of a job spec (the job's and each sidecar's).

Each value's associated data is its scope (`job:<id>`, or `schedule:<tenant>/<name>` for a
schedule's template) and its field (`env.KEY`, `sidecars.<name>.env.KEY`): a sealed value
opens only where it was sealed. A value that is not sealed is left as it is when opening:
jobs submitted before secrets were sealed still run with their plaintext.
"""

from __future__ import annotations

from collections.abc import Callable

from msgspec.structs import replace

from dockyard.core.spec import JobSpec, Sidecar
from dockyard.sealing.envelope import KeyRing, UnknownKey, is_sealed

Change = Callable[[str, str], str]  # (value, associated data) -> value


def job_scope(job_id: str) -> str:
    return f"job:{job_id}"


def schedule_scope(tenant: str, name: str) -> str:
    return f"schedule:{tenant}/{name}"


def has_secrets(spec: JobSpec) -> bool:
    return bool(spec.secrets) or any(sidecar.secrets for sidecar in spec.sidecars)


def seal_spec(spec: JobSpec, ring: KeyRing, scope: str) -> JobSpec:
    """Every secret value sealed for `scope` (a value that looks sealed is sealed again: it
    is the tenant's text, and opens back to it)."""
    return _each_secret(spec, scope, ring.seal)


def open_spec(spec: JobSpec, ring: KeyRing | None, scope: str) -> JobSpec:
    """Every sealed secret value opened; SealError (UnknownKey) when one does not open.
    Without a ring, only a spec with no sealed value opens."""

    def open_one(value: str, ad: str) -> str:
        if not is_sealed(value):
            return value  # stored before this version sealed secrets
        if ring is None:
            raise _no_ring()
        return ring.open(value, ad)

    return _each_secret(spec, scope, open_one)


def reseal_spec(spec: JobSpec, ring: KeyRing | None, from_scope: str, to_scope: str) -> JobSpec:
    """A schedule's template as one fired job's spec: opened for the schedule, sealed for the
    job (plaintext left from before this version is sealed too, when there is a ring)."""
    opened = open_spec(spec, ring, from_scope)
    return opened if ring is None else seal_spec(opened, ring, to_scope)


def _no_ring() -> UnknownKey:
    return UnknownKey("its secrets are sealed, and DOCKYARD_SECRETS_KEY is not set here")


def _each_secret(spec: JobSpec, scope: str, change: Change) -> JobSpec:
    if not has_secrets(spec):
        return spec
    return replace(
        spec,
        env=_env(spec.env, spec.secrets, f"{scope}:env.", change),
        sidecars=tuple(_sidecar(sidecar, scope, change) for sidecar in spec.sidecars),
    )


def _sidecar(sidecar: Sidecar, scope: str, change: Change) -> Sidecar:
    if not sidecar.secrets:
        return sidecar
    where = f"{scope}:sidecars.{sidecar.name}.env."
    return replace(sidecar, env=_env(sidecar.env, sidecar.secrets, where, change))


def _env(
    env: dict[str, str], secrets: tuple[str, ...], where: str, change: Change
) -> dict[str, str]:
    secret = set(secrets)
    return {
        key: change(value, f"dockyard:v1:{where}{key}") if key in secret else value
        for key, value in env.items()
    }
