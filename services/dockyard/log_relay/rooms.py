"""The rooms of a relay, by job: one is made on a job's first client and closed a little
after its last, so many clients of one job share one upstream subscription (see room.py)."""

from __future__ import annotations

import asyncio

from dockyard.log_relay.room import Follower, Room, Sources


class Rooms:
    """The rooms of this relay, by job: made on a job's first client, closed after its last."""

    def __init__(self, sources: Sources) -> None:
        self._src = sources
        self._rooms: dict[str, Room] = {}
        self._opening: dict[str, asyncio.Future[Room]] = {}
        self._closing: dict[str, asyncio.TimerHandle] = {}
        self._closers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, job_id: str) -> Room | None:
        return self._rooms.get(job_id)

    async def join(self, job_id: str, follower: Follower) -> Room:
        room = await self._room(job_id)
        if (timer := self._closing.pop(job_id, None)) is not None:
            timer.cancel()
        room.followers.add(follower)
        self._src.metrics.followers.inc()
        return room

    def leave(self, room: Room, follower: Follower) -> None:
        if follower not in room.followers:
            return
        room.followers.discard(follower)
        self._src.metrics.followers.dec()
        if not room.followers and room.job_id not in self._closing:
            loop = asyncio.get_running_loop()
            self._closing[room.job_id] = loop.call_later(
                self._src.limits.linger_s, self._close_later, room
            )

    async def close_all(self) -> None:
        for timer in self._closing.values():
            timer.cancel()
        self._closing.clear()
        rooms, self._rooms = list(self._rooms.values()), {}
        await asyncio.gather(*(room.close() for room in rooms), *self._closers)
        self._src.metrics.rooms.set(0)

    async def _room(self, job_id: str) -> Room:
        if (room := self._rooms.get(job_id)) is not None:
            return room
        if (opening := self._opening.get(job_id)) is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self._opening[job_id] = future
        room = Room(job_id, self._src)
        try:
            await room.open()
        except BaseException as error:
            await room.close()
            if isinstance(error, Exception):
                future.set_exception(error)
                future.exception()  # marked retrieved: the joiners waiting on it get it
            else:
                future.cancel()
            raise
        finally:
            del self._opening[job_id]
        self._rooms[job_id] = room
        self._src.metrics.rooms.inc()
        future.set_result(room)
        return room

    def _close_later(self, room: Room) -> None:
        self._closing.pop(room.job_id, None)
        if room.followers or self._rooms.get(room.job_id) is not room:
            return
        del self._rooms[room.job_id]
        self._src.metrics.rooms.dec()
        task = asyncio.create_task(room.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
