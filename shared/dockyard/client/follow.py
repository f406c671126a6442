"""Following a job's log over the log relay's WebSocket, resuming after a dropped connection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from msgspec import Struct

from dockyard.client.api import ClientError, error_from
from dockyard.client.target import Target

# How long a follower keeps trying to reconnect before it gives up.
RECONNECT_FOR_S = 60.0
_HEARTBEAT_S = 20.0


class JobEnd(Struct, frozen=True, kw_only=True):
    status: str
    exit_code: int | None
    reason: str | None


def exit_code_for(end: JobEnd) -> int:
    """The process exit code a follower ends with: the job's, 124 timed out, 130 cancelled."""
    if end.status == "succeeded":
        return 0
    if end.status == "timed_out":
        return 124
    if end.status == "cancelled":
        return 130
    if end.exit_code is not None and 0 < end.exit_code < 256:
        return end.exit_code
    return 1


async def follow_log(
    target: Target,
    job_id: str,
    on_line: Callable[[dict[str, Any]], None],
    *,
    after: int = 0,
    on_connected: Callable[[], None] | None = None,
) -> JobEnd:
    """Call `on_line` for every line after `after`, live, until the job's end frame."""
    url = f"{target.logs_url}/v1/jobs/{quote(job_id, safe='')}/logs/ws"
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    last = after
    give_up_at: float | None = None
    delay = 0.2
    async with aiohttp.ClientSession(headers=headers) as session:
        while True:
            try:
                async with session.ws_connect(
                    url, params={"after": str(last)}, heartbeat=_HEARTBEAT_S
                ) as ws:
                    give_up_at, delay = None, 0.2
                    if on_connected is not None:
                        on_connected()
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        frame = json.loads(message.data)
                        if frame.get("type") == "lines":
                            for line in frame.get("lines", []):
                                seq = int(line.get("seq", 0))
                                if seq <= last:
                                    continue  # already shown before a reconnect
                                last = seq
                                on_line(line)
                        elif frame.get("type") == "end":
                            return JobEnd(
                                status=str(frame.get("status")),
                                exit_code=frame.get("exit_code"),
                                reason=frame.get("reason"),
                            )
            except aiohttp.WSServerHandshakeError as error:
                if error.status in (400, 401, 403, 404):
                    raise _handshake_error(error, job_id, url) from None
                problem = f"HTTP {error.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                problem = str(error) or type(error).__name__
            else:
                problem = "the connection closed before the job's end"
            now = time.monotonic()
            give_up_at = give_up_at or now + RECONNECT_FOR_S
            if now >= give_up_at:
                raise ClientError(
                    f"lost the log stream of {job_id} at line {last} and could not resume: "
                    f"{problem.splitlines()[0]}; is the log relay at {target.logs_url} running?"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _handshake_error(error: aiohttp.WSServerHandshakeError, job_id: str, url: str) -> ClientError:
    if error.status == 404:
        return ClientError(f"no job {job_id} (or not yours)", status=404)
    return error_from(error.status, "", url)
