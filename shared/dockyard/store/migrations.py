"""Schema migrations: the numbered SQL files under `schemas/migrations`, applied once each."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import asyncpg

# Any two processes migrating at once serialise on this lock instead of racing.
_LOCK_KEY = 0x646F636B79617264  # "dockyard"


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
    """Apply the migrations not yet applied; return the names applied now."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate_connection(conn)
    finally:
        await conn.close()


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
