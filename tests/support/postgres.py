"""A database per test, copied from a template migrated once per session."""

from __future__ import annotations

import secrets
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from dockyard.embedded import EmbeddedPostgres
from dockyard.embedded.postgres import quote_ident
from dockyard.store.roles import APP_ROLE, ensure_app_role

TEMPLATE = "dockyard_template"
# The services' own role (no superuser), as `dockyard up` makes it; its grants are made in the
# template, so every test database has them.
APP_PASSWORD = secrets.token_urlsafe(24)


def reachable_tmp_dir(prefix: str) -> Path:
    """A temporary dir that PostgreSQL's own user can enter.

    Not under pytest's tmp dir: as root that is private (0700), and PostgreSQL, which
    refuses root, runs as another user.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


async def create_template(server: EmbeddedPostgres, name: str = TEMPLATE) -> str:
    """(Re)create database `name` with the schema migrated; return its name."""
    # Imported here so that a broken migrations module fails the database tests only.
    from dockyard.store.migrations import migrate

    await _admin(server, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    await _admin(server, f"CREATE DATABASE {quote_ident(name)}")
    await migrate(server.admin_url(name))
    conn = await asyncpg.connect(server.admin_url(name))
    try:
        await ensure_app_role(conn, APP_PASSWORD)
    finally:
        await conn.close()
    return name


def app_url(server: EmbeddedPostgres, database_url: str) -> str:
    """The services' role's URL for the database of `database_url`."""
    return server.url_as(APP_ROLE, APP_PASSWORD, urlsplit(database_url).path.lstrip("/"))


async def create_database(server: EmbeddedPostgres, template: str) -> str:
    name = f"test_{uuid.uuid4().hex[:16]}"
    await _admin(server, f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}")
    return name


async def drop_database(server: EmbeddedPostgres, name: str) -> None:
    # FORCE terminates the connections a test left open, which would otherwise block the drop.
    await _admin(server, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


async def _admin(server: EmbeddedPostgres, sql: str) -> None:
    conn = await asyncpg.connect(server.admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
