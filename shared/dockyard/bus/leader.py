"""Which outbox relay is active: a PostgreSQL advisory lock held on a dedicated connection.

Only one relay publishes at a time (two would only cost duplicates, but also double the load
and let checkpoints race): the active one holds a session-level advisory lock on its own
connection, the others poll for it. The lock lives exactly as long as that session, so a relay
that crashes, or whose connection dies, frees it for a standby; the holder notices the same
loss (termination listener, or a failed health check) and stops publishing before its next page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, Protocol

import asyncpg

from dockyard.process.cancelling import raise_if_cancelled
from dockyard.store.pool import Connection
from dockyard.store.ports import StoreUnavailable

log = logging.getLogger("dockyard.bus.outbox")

# pg advisory lock key of the outbox relay: "dyoutbox" as a big-endian int64.
OUTBOX_LOCK_KEY: Final = int.from_bytes(b"dyoutbox", "big", signed=True)

# If the holder's host vanishes without closing its socket, PostgreSQL must still free the lock
# soon: keepalive probes after 10 s idle, 5 s apart, 3 lost → the session ends in ~25 s.
_SESSION_SETTINGS: Final = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "application_name": "dockyard-outbox",
}

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class LeadershipLost(Exception):
    """Raised by `check` when the lock's session has ended: another relay may be active now."""


class Leader(Protocol):
    """Decides which relay is active; the relay checks before each page it publishes."""

    async def acquire(self) -> None:
        """Return once this relay is the active one (retrying while the database is down)."""
        ...

    async def check(self) -> None:
        """Raise LeadershipLost if this relay may no longer be the active one."""
        ...

    async def close(self) -> None:
        """Give up the role (if held) and free what it holds."""
        ...


class SoleLeader:
    """For a single relay with nothing to coordinate (tests, tools, the in-memory store)."""

    async def acquire(self) -> None:
        return

    async def check(self) -> None:
        return

    async def close(self) -> None:
        return


class PgLeader:
    """A session-level advisory lock on one dedicated connection to `dsn`."""

    def __init__(
        self,
        dsn: str,
        *,
        key: int = OUTBOX_LOCK_KEY,
        retry_s: float = 1.0,
        health_check_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._key = key
        self._retry_s = retry_s
        self._health_check_s = health_check_s
        self._conn: Connection | None = None
        self._held = False
        self._checked_at = 0.0

    @property
    def held(self) -> bool:
        return self._held and self._conn is not None and not self._conn.is_closed()

    async def acquire(self) -> None:
        standby_logged = False
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            try:
                if await self._try_lock():
                    log.info("outbox.leader_acquired", extra={"event": "outbox.leader_acquired"})
                    return
                if not standby_logged:
                    log.info("outbox.standby", extra={"event": "outbox.standby"})
                    standby_logged = True
            except StoreUnavailable as exc:
                log.warning("outbox.leader_unavailable error=%s", exc)
                await self._drop_connection()
            await asyncio.sleep(self._retry_s)

    async def check(self) -> None:
        if self.held and time.monotonic() - self._checked_at >= self._health_check_s:
            # A session can die silently (host gone, no RST): ask it, now and then.
            try:
                await self._conn_or_raise().fetchval("SELECT 1", timeout=5)
                self._checked_at = time.monotonic()
            except _ERRORS:
                self._held = False
                await self._drop_connection()
        if not self.held:
            self._held = False
            raise LeadershipLost("the outbox lock's database session has ended")

    async def close(self) -> None:
        """Close the connection, which releases the lock."""
        self._held = False
        await self._drop_connection()

    async def _try_lock(self) -> bool:
        conn = await self._connection()
        try:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
        except _ERRORS as exc:
            raise StoreUnavailable(f"outbox lock: {exc}") from exc
        self._held = bool(locked)
        self._checked_at = time.monotonic()
        return self._held

    def _conn_or_raise(self) -> Connection:
        if self._conn is None:
            raise LeadershipLost("no outbox lock connection")
        return self._conn

    async def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            conn: Connection = await asyncpg.connect(
                self._dsn, server_settings=_SESSION_SETTINGS, timeout=10
            )
        except _ERRORS as exc:
            raise StoreUnavailable(f"outbox lock connection: {exc}") from exc
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2)
        except _ERRORS:
            conn.terminate()

    def _on_terminated(self, _conn: object) -> None:
        if self._held:
            log.warning("outbox.leader_lost", extra={"event": "outbox.leader_lost"})
        self._held = False
