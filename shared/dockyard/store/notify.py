"""Wake catch-up readers when events are committed, instead of having them poll hard.

The `events` table notifies channel `dockyard_events` on every committing insert. A Listener
holds one pooled connection that LISTENs, and remembers a notification that arrived while
nobody was waiting, so an event committed between a reader's read and its wait is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from dockyard.store.pool import Pool, translated

_Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


class Listener:
    """Waits on one notification channel; `wait` is meant for a single reader at a time."""

    def __init__(self, pool: Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._conn: _Conn | None = None  # held from the pool while listening
        self._alive = False  # cleared by the connection's termination callback
        self._flag = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._conn is not None and self._alive

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True if a notification came (or listening just began), False after `timeout`."""
        if not self.listening:
            await self._start()
            # Anything committed before LISTEN took effect went unheard: read again.
            return True
        if not self._flag.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._flag.wait()
            except TimeoutError:
                return False
        self._flag.clear()
        return True

    @property
    def pending(self) -> bool:
        """A notification came since the last wait returned or `clear` was called."""
        return self._flag.is_set()

    def clear(self) -> None:
        """Forget notifications so far: the caller is about to read what they announced."""
        self._flag.clear()

    def poke(self) -> None:
        """Make the next wait return at once, as a notification would."""
        self._flag.set()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        alive, self._alive = self._alive, False
        # After a server restart the connection is dead and asyncpg may have detached it from
        # its proxy already: cleaning up what is gone must not fail the caller.
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
            if alive:
                conn.remove_termination_listener(self._lost)
                await conn.remove_listener(self._channel, self._notified)  # UNLISTEN
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
            await self._pool.release(conn)

    async def _start(self) -> None:
        await self.close()  # a connection that died: give it back before taking another
        async with translated("listen"):
            conn = await self._pool.acquire()
            try:
                conn.add_termination_listener(self._lost)
                await conn.add_listener(self._channel, self._notified)
            except BaseException:
                await self._pool.release(conn)
                raise
        self._conn = conn
        self._alive = True
        self._flag.clear()

    def _notified(self, *_: object) -> None:
        self._flag.set()

    def _lost(self, *_: object) -> None:
        # Wake the waiter: its next wait() listens anew, and it re-reads what it may have missed.
        self._alive = False
        self._flag.set()
