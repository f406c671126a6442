"""Sending one client a job's lines: stored ones first, then live ones, then the end.

A client is a position (`sent`). Behind the room's ring it reads pages from the store; once it
reaches the ring it reads the ring, many chunks per frame. Both sources are read by seq from
`sent`, so the hand-over between them can neither skip nor repeat a line. A client that the
ring leaves behind (it drops what the client still needed) or whose socket takes no frame for
`stall_s` is too slow: it is closed with 1013 and comes back with `after=`. Its memory is a
frame and the socket's buffer, whatever it does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from dockyard.job_logs.chunks import lines_frame
from dockyard.log_relay.room import Follower, Room

NORMAL: Final = 1000
TRY_AGAIN_LATER: Final = 1013

Sender = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class FollowLimits:
    frame_bytes: int = 512 * 1024  # lines per frame, about
    page_lines: int = 20_000  # lines per store read for a client behind the ring
    stall_s: float = 10.0  # a frame the socket does not take in this long: too slow
    retry_s: float = 0.02  # first wait for the store to catch up (doubling to max_wait_s)
    max_wait_s: float = 0.5


async def follow(room: Room, follower: Follower, send: Sender, limits: FollowLimits) -> int:
    """Send until the end frame (returns 1000) or the client is too slow (returns 1013)."""
    waits = 0

    async def timed_send(frame: bytes) -> bool:
        try:
            async with asyncio.timeout(limits.stall_s):
                await send(frame)
        except TimeoutError:
            return False
        return True

    while True:
        if follower.overrun:
            return TRY_AGAIN_LATER
        if room.final is not None and follower.sent >= room.final:
            assert room.end is not None
            await send(room.end)
            return NORMAL
        if not follower.live and follower.sent + 1 < room.ring.start:
            page = await room.read_store(follower.sent, limits.page_lines)
            if page.chunks:
                if not await timed_send(lines_frame(page.bodies)):
                    return TRY_AGAIN_LATER
                room.count_sent(page.last - follower.sent)
                follower.sent = page.last
                waits = 0
                continue
            # The store is behind (the persister commits every few ms): wait for it.
            delay = min(limits.max_wait_s, limits.retry_s * 2.0**waits)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            waits += 1
            continue
        follower.live = True
        bodies, last = room.ring.read(follower.sent, limits.frame_bytes)
        if bodies:
            if not await timed_send(lines_frame(bodies)):
                return TRY_AGAIN_LATER
            room.count_sent(last - follower.sent)
            follower.sent = last
            room.advanced()
            continue
        follower.wake.clear()
        await follower.wake.wait()
