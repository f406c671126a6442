"""Schema migrations: the numbered SQL files under `schemas/migrations`, applied once each."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from pathlib import Path

import asyncpg

log = logging.getLogger("dockyard.store")

# Any two processes migrating at once serialise on this lock instead of racing.
_LOCK_KEY = 0x646F636B79617264  # "dockyard"
# How often a role that may not change the schema looks again whether it is migrated.
_WAIT_POLL_S = 1.0


def migrations_dir() -> Path:
    """The folder of SQL files: the repo's `schemas/` in a checkout, else inside the wheel.

    The checkout comes first: an editable install also leaves a (stale) packaged copy.
    """
    in_checkout = Path(__file__).resolve().parents[3] / "schemas" / "migrations"
    if in_checkout.is_dir():
        return in_checkout
    return Path(str(importlib.resources.files("dockyard") / "_schemas" / "migrations"))


def migration_files() -> list[Path]:
    return sorted(migrations_dir().glob("*.sql"))


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied; return the names applied now.

    A role that may not make tables (the services' own, under `dockyard up`) changes
    nothing: it returns once the schema is up to date, waiting (and saying so) until a role
    that may has migrated it."""
    conn = await asyncpg.connect(dsn)
    try:
        said = False
        while await pending(conn) and not await _may_change_schema(conn):
            if not said:
                log.warning(
                    "migrations.waiting role=%s: the schema is not migrated and this role may "
                    "not change it; waiting for `dockyard db migrate` as the tables' owner",
                    await conn.fetchval("SELECT current_user"),
                    extra={"event": "migrations.waiting"},
                )
                said = True
            await asyncio.sleep(_WAIT_POLL_S)
        if not await pending(conn):
            return []
        return await migrate_connection(conn)
    finally:
        await conn.close()


async def pending(conn: asyncpg.Connection) -> list[str]:
    """The migrations not applied yet (all of them on an empty database), read-only."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return [path.name for path in migration_files()]
    done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    return [path.name for path in migration_files() if path.name not in done]


async def _may_change_schema(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT rolsuper OR has_schema_privilege('public', 'CREATE') FROM pg_roles "
            "WHERE rolname = current_user"
        )
    )


async def migrate_connection(conn: asyncpg.Connection) -> list[str]:
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in migration_files():
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
