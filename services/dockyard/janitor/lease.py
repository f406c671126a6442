"""One sweep at a time across every janitor: a PostgreSQL advisory lock per sweep.

The lock is session-level, on a connection of its own, taken before a sweep and given back
after it. Not a transaction-level lock: a sweep waits on Docker for seconds or minutes, and an
open transaction that long would hold back the outbox relay (it reads below the oldest running
transaction). A janitor that dies mid-sweep ends its session, and PostgreSQL frees the lock at
once (or, if its host vanished without a word, after the keepalive gives up, ~25 s).

The lock keeps janitors from doing the same work side by side; it is not what makes them safe.
Every change a sweep makes is an append with the expected version or an idempotent removal, so
two sweeps overlapping after a lost session double nothing either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import asyncpg

from dockyard.store.pool import Connection
from dockyard.store.ports import StoreUnavailable

log = logging.getLogger("dockyard.janitor.lease")

# "dyjanitr" as a big-endian int64.
JANITOR_LOCK_KEY: Final = int.from_bytes(b"dyjanitr", "big", signed=True)

_SESSION_SETTINGS: Final = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "application_name": "dockyard-janitor",
}
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class LockLost(Exception):
    """Raised by `check` when the lock's session ended mid-sweep: another janitor may sweep."""


class SweepLock:
    def __init__(self, dsn: str, *, key: int = JANITOR_LOCK_KEY, poll_s: float = 0.5) -> None:
        self._dsn = dsn
        self._key = key
        self._poll_s = poll_s
        self._conn: Connection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held and self._conn is not None and not self._conn.is_closed()

    async def acquire(self, wait_s: float) -> bool:
        """Take the lock, waiting up to `wait_s` for another janitor's sweep; False if not.

        Raises StoreUnavailable when the database cannot be reached."""
        deadline = time.monotonic() + wait_s
        while True:
            if await self._try():
                return True
            if time.monotonic() + self._poll_s > deadline:
                return False
            await asyncio.sleep(self._poll_s)

    async def check(self) -> None:
        """Raise LockLost if the session holding the lock has ended."""
        if not self.held:
            self._held = False
            raise LockLost("the janitor lock's database session has ended")
        try:
            assert self._conn is not None
            await self._conn.fetchval("SELECT 1", timeout=5)
        except _ERRORS as exc:
            self._held = False
            await self._drop()
            raise LockLost(f"the janitor lock's database session failed: {exc}") from exc

    async def release(self) -> None:
        """Give the lock back, keeping the connection for the next sweep."""
        if not self._held:
            return
        self._held = False
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        try:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", self._key, timeout=5)
        except _ERRORS as exc:  # the session is in doubt: ending it frees the lock for sure
            log.warning("janitor.unlock_failed error=%s", exc)
            await self._drop()

    async def close(self) -> None:
        self._held = False
        await self._drop()

    async def _try(self) -> bool:
        try:
            conn = await self._connection()
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key, timeout=10)
        except _ERRORS as exc:
            await self._drop()
            raise StoreUnavailable(f"janitor lock: {exc}") from exc
        self._held = bool(locked)
        return self._held

    async def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn: Connection = await asyncpg.connect(
            self._dsn, server_settings=_SESSION_SETTINGS, timeout=10
        )
        self._conn = conn
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2)
        except _ERRORS:
            conn.terminate()
