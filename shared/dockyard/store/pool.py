"""The asyncpg side of the store: the pool, its JSON codecs, and the one place driver errors
are translated into the store's own.

JSON (`json` and `jsonb`) crosses this boundary as raw UTF-8 bytes in both directions, so a
payload is parsed exactly once, by msgspec, in the code that knows its type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgx
from asyncpg.pool import PoolConnectionProxy

from dockyard.store.ports import StoreUnavailable

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
# A connection of its own, or one lent by a pool: the store works with either.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# jsonb's binary wire format is a version byte (1) followed by the JSON text.
_JSONB_VERSION = b"\x01"

# Errors that say "the database is not there right now", not "this request is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect or pool acquire timed out
    pgx.PostgresConnectionError,  # SQLSTATE class 08, and a connection that died under us
    pgx.CannotConnectNowError,  # starting up or shutting down
    pgx.AdminShutdownError,
    pgx.CrashShutdownError,
    pgx.InsufficientResourcesError,  # too many connections, disk full, out of memory
    pgx.ReadOnlySQLTransactionError,  # a standby after failover: writes must wait
    # A pooled connection that died mid-operation when the server restarted: asyncpg reports
    # it as a client-side state error ("cannot switch to state ...", "connection is closed").
    pgx.InternalClientError,
    pgx.InterfaceError,
)


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE)


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn the driver's errors into the store's: StoreUnavailable when the database cannot
    be reached, ValueError for data it refuses (a malformed uuid, a NUL in a JSON string)."""
    try:
        yield
    except StoreUnavailable:
        raise
    except pgx.DataError as exc:  # SQLSTATE class 22, and parameters that do not encode
        raise ValueError(f"{what}: {exc}") from exc
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(f"{what}: the database is unavailable ({exc})") from exc
        raise


def _encode_jsonb(value: bytes | str) -> bytes:
    return _JSONB_VERSION + (value.encode() if isinstance(value, str) else value)


def _decode_jsonb(data: bytes) -> bytes:
    return data[1:]


def _encode_json(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _identity(data: bytes) -> bytes:
    return data


async def init_connection(conn: Connection) -> None:
    """Install the raw-bytes JSON codecs; pass as `init=` to any pool or connection."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=_encode_json, decoder=_identity, format="binary"
    )


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Give a connection back as it is (asyncpg has already rolled back any transaction)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    init: Callable[[Connection], Any] | None = None,
    **kw: Any,
) -> Pool:
    """A pool whose `json`/`jsonb` values are raw bytes (encode with msgspec, pass bytes in).

    Small by default: each service holds one pool, and a busy PostgreSQL serves best with
    few connections per core. `init`, if given, runs after the codecs are installed.

    A connection goes back to the pool without asyncpg's reset query (RESET ALL, UNLISTEN *,
    unlock all advisory locks): that is a round trip more on every release, which would
    double the cost of a one-statement append. So whoever borrows a connection leaves no
    session state behind: SET LOCAL not SET, transaction-level advisory locks, and UNLISTEN
    (remove_listener) what it listened to. Pass `reset=None` to get asyncpg's reset back.
    """

    async def _init(conn: Connection) -> None:
        await init_connection(conn)
        if init is not None:
            await init(conn)

    kw.setdefault("reset", _keep_session)
    async with translated("create_pool"):
        pool: Pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init, **kw
        )
    return pool


async def connect(dsn: str, **kw: Any) -> asyncpg.Connection[asyncpg.Record]:
    """One connection with the same codecs as the pool's (for admin tasks and listeners)."""
    async with translated("connect"):
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(dsn, **kw)
        await init_connection(conn)
    return conn


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL URL fit for a log or a terminal: its password (in the user part or a
    `password=` parameter) replaced by `***`."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "(a malformed PostgreSQL URL)"
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
