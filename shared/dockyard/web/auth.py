"""Bearer tokens to tenants. Tokens are compared in constant time, all of them, every time."""

from __future__ import annotations

import hmac

from aiohttp import web

from dockyard.web.access import note_tenant
from dockyard.web.errors import ApiError

ADMIN = "admin"


class Tokens:
    def __init__(self, token_to_tenant: dict[str, str]) -> None:
        self._pairs = [(t.encode(), tenant) for t, tenant in token_to_tenant.items()]

    def tenant_of(self, token: str) -> str | None:
        """The tenant a token belongs to; every stored token is compared, so timing tells
        nothing about which one (or how much of one) matched."""
        given = token.encode()
        found: str | None = None
        for stored, tenant in self._pairs:
            if hmac.compare_digest(stored, given):
                found = tenant
        return found

    def authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "a bearer token is required")
        tenant = self.tenant_of(token.strip())
        if tenant is None:
            raise ApiError(401, "unauthorized", "the token is not valid")
        note_tenant(request, tenant)
        return tenant

    def require_admin(self, request: web.Request) -> None:
        """401 without a valid token, 403 for a tenant's: what only the operator may read
        (/metrics names every tenant's queues and counts)."""
        if self.authenticate(request) != ADMIN:
            raise ApiError(403, "forbidden", "this needs the admin token")


def can_see(tenant: str, owner: str) -> bool:
    return tenant in (ADMIN, owner)
