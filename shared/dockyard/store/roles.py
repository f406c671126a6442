"""The services' own PostgreSQL role: a login that may read and write the rows they use and
nothing else (security review F7, F11).

It is no superuser and owns nothing, so it cannot run programs (`COPY ... FROM PROGRAM`),
read server files, make roles, or alter or drop a table or the append-only trigger on
`events`; on `events` it may only read and append. The migrations run as the tables' owner
(a superuser, or the role compose's PostgreSQL makes), which calls `ensure_app_role` after
them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Final

from dockyard.store.pool import Connection

APP_ROLE: Final = "dockyard_app"

# What the services do to each table (LISTEN/NOTIFY and advisory locks need no grant). Every
# table the migrations make is listed: a test fails on one that is not. TRUNCATE, TRIGGER and
# REFERENCES are never granted; `FOR UPDATE` needs UPDATE.
APP_PRIVILEGES: Final[Mapping[str, tuple[str, ...]]] = {
    "schema_migrations": ("SELECT",),  # are the migrations done?
    "events": ("SELECT", "INSERT"),  # append-only, for the role as well as by the trigger
    "checkpoints": ("SELECT", "INSERT", "UPDATE"),
    "jobs": ("SELECT", "INSERT", "UPDATE", "DELETE"),  # DELETE: the janitor's retention
    "purged_jobs": ("SELECT", "INSERT", "UPDATE"),
    "schedules": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "log_chunks": ("SELECT", "INSERT", "DELETE"),
    "log_jobs": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "outbox_set_aside": ("SELECT", "INSERT"),
}

_ATTRIBUTES: Final = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


async def ensure_app_role(conn: Connection, password: str, role: str = APP_ROLE) -> None:
    """Make (or reset) `role` with `password` and exactly the grants of APP_PRIVILEGES on
    the connection's database. Run it as the tables' owner, after the migrations."""
    ident = quote_ident(role)
    verifier = scram_sha256_verifier(password)  # the server never sees the password itself
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(f"{verb} ROLE {ident} WITH {_ATTRIBUTES} PASSWORD '{verifier}'")
        # Whatever it was made a member of (pg_execute_server_program...), it is no longer.
        for granted in await conn.fetch(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            role,
        ):
            await conn.execute(f"REVOKE {quote_ident(granted['rolname'])} FROM {ident}")
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {ident}")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")
        # PostgreSQL 15+ already denies it; older servers let anyone make tables in public.
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ident}")
        await conn.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {ident}")
        for table, privileges in APP_PRIVILEGES.items():
            if await conn.fetchval("SELECT to_regclass($1)", f"public.{table}") is None:
                continue  # a schema older than this code: granted once it is migrated
            await conn.execute(f"GRANT {', '.join(privileges)} ON public.{table} TO {ident}")


def scram_sha256_verifier(password: str, *, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677), made here.

    Only ASCII passwords (ours are): others would first need SASLprep."""
    if not password.isascii():
        raise ValueError("only ASCII passwords are supported")
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted, for names that cannot be bound as parameters."""
    return '"' + name.replace('"', '""') + '"'
