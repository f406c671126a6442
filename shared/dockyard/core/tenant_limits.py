"""What an operator allows each tenant (DOCKYARD_TENANT_LIMITS), and the spec checks that follow.

Pure: the file's JSON is decoded strictly by `decode_tenant_limits`, and `check_tenant_spec`
refuses, with a SpecError naming the field, what the tenant's entry does not allow: `egress`
networks without `allow_egress`, uid 0 or a writable root file system without `allow_root`.
A tenant without an entry gets the `"*"` entry, or the defaults.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from dockyard.core.spec import JobSpec, SpecError

WILDCARD = "*"


class TenantLimits(Struct, frozen=True, forbid_unknown_fields=True):
    """One tenant's entry; every key optional (the quota keys are read by the scheduler's
    admission, where it has one)."""

    max_running: Annotated[int, Meta(ge=0)] | None = None
    max_queued: Annotated[int, Meta(ge=0)] | None = None
    max_schedules: Annotated[int, Meta(ge=0)] | None = None
    submit_per_s: Annotated[float, Meta(gt=0)] | None = None
    weight: Annotated[float, Meta(gt=0)] = 1.0
    allow_egress: bool = True
    allow_root: bool = False


class TenantPolicies(Struct, frozen=True):
    """Every tenant's entry, by tenant name (and `"*"` for the others)."""

    by_tenant: dict[str, TenantLimits] = {}

    def of(self, tenant: str) -> TenantLimits:
        found = self.by_tenant.get(tenant) or self.by_tenant.get(WILDCARD)
        return found if found is not None else TenantLimits()


_decoder = msgspec.json.Decoder(dict[str, TenantLimits])


def decode_tenant_limits(data: bytes) -> TenantPolicies:
    """The file's JSON; ValueError saying what is wrong (an unknown key, a wrong type)."""
    try:
        return TenantPolicies(_decoder.decode(data))
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def is_root(user: str) -> bool:
    """Whether `user` (NAME or UID[:GID]) runs as uid 0: `0`, `00:5`, `root`, `root:x`.

    A name other than `root` resolves inside the image and is not seen here (a known limit,
    docs/failures.md): all capabilities stay dropped whoever it is."""
    uid = user.partition(":")[0]
    return uid == "root" or (uid.isascii() and uid.isdigit() and int(uid) == 0)


def check_tenant_spec(spec: JobSpec, limits: TenantLimits, prefix: str = "") -> None:
    """SpecError naming the first field of `spec` the tenant's entry does not allow."""
    if spec.effective_network == "egress" and not limits.allow_egress:
        raise SpecError(
            f"{prefix}network",
            "network egress is not allowed for this tenant (allow_egress is false in "
            "DOCKYARD_TENANT_LIMITS); use isolated or none",
        )
    if is_root(spec.user) and not limits.allow_root:
        raise SpecError(
            f"{prefix}user",
            f"user {spec.user!r} runs as uid 0, which this tenant may not (allow_root in "
            "DOCKYARD_TENANT_LIMITS); give a non-zero uid such as 65534:65534",
        )
    if not spec.read_only and not limits.allow_root:
        raise SpecError(
            f"{prefix}read_only",
            "read_only: false (a writable root file system) is not allowed for this tenant "
            "(allow_root in DOCKYARD_TENANT_LIMITS); write to /tmp or the workdir instead",
        )
