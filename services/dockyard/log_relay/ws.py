"""`/v1/jobs/{id}/logs/ws?after=N`: a job's log, stored lines then live ones, then `end`.

Everything that can refuse a client does so before the upgrade, as plain HTTP with the
contract's error document: a foreign Origin (403), a missing or bad token (401), another
tenant's or an unknown job (404), a bad `after` (422). Browsers cannot set headers on a
WebSocket, so the token may come as the subprotocol `bearer.<token>` next to `dockyard.v1`,
which the server selects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Final

from aiohttp import WSMsgType, web

from dockyard.bus.errors import BusError
from dockyard.log_relay.context import RelayContext, ctx_of
from dockyard.log_relay.follow import TRY_AGAIN_LATER, follow
from dockyard.log_relay.room import Follower, Room
from dockyard.process.cancelling import cancel_and_wait
from dockyard.store.ports import StoreUnavailable
from dockyard.web.access import note_tenant
from dockyard.web.errors import ApiError, invalid

log = logging.getLogger("dockyard.log_relay.ws")

PROTOCOL: Final = "dockyard.v1"
BEARER_PREFIX: Final = "bearer."
GOING_AWAY: Final = 1001
INTERNAL_ERROR: Final = 1011
GONE: Final = 1006  # no close frame: the peer went away

SOCKETS = web.AppKey("dockyard.log_relay.sockets", weakref.WeakSet[web.WebSocketResponse])


def check_origin(ctx: RelayContext, request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and not ctx.origin_allowed(origin):
        raise ApiError(403, "forbidden_origin", f"origin {origin!r} may not open the log")


def ws_tenant(ctx: RelayContext, request: web.Request) -> str:
    """The tenant of the bearer token in the Authorization header or the subprotocols."""
    if "Authorization" in request.headers:
        return ctx.tokens.authenticate(request)
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for item in (part.strip() for part in offered.split(",")):
        if item.startswith(BEARER_PREFIX):
            tenant = ctx.tokens.tenant_of(item[len(BEARER_PREFIX) :])
            if tenant is None:
                raise ApiError(401, "unauthorized", "the token is not valid")
            note_tenant(request, tenant)
            return tenant
    raise ApiError(401, "unauthorized", "a bearer token is required")


def seq_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 18:
        raise invalid(name, "must be a whole number, 0 or more")
    return int(text)


async def logs_ws(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    check_origin(ctx, request)
    tenant = ws_tenant(ctx, request)
    job_id, _ = await ctx.visible_job(request, tenant)
    after = seq_param(request, "after", 0)
    settings = ctx.ws
    ws = web.WebSocketResponse(
        protocols=(PROTOCOL,),
        heartbeat=settings.heartbeat_s,
        max_msg_size=settings.max_incoming_bytes,
        compress=False,  # lines are cheap to send and costly to deflate at this rate
        timeout=settings.close_timeout_s,
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "not_websocket", "this endpoint speaks WebSocket only")
    follower = Follower(after)
    room = await ctx.rooms.join(job_id, follower)  # before the upgrade: a failure is a 503
    try:
        await ws.prepare(request)
        request.app[SOCKETS].add(ws)
        await _serve(ctx, request, ws, room, follower)
    finally:
        ctx.rooms.leave(room, follower)
    return ws


async def _serve(
    ctx: RelayContext,
    request: web.Request,
    ws: web.WebSocketResponse,
    room: Room,
    follower: Follower,
) -> None:
    """Run the sender and the reader until one ends, then close."""

    async def send_text(frame: bytes) -> None:
        # JSON text frames, sent as the bytes they are. Shielded: a send waiting for a slow
        # peer may be given up on (then the close frame follows it), but cancelling aiohttp's
        # drain would leave its flow control broken for the close.
        await asyncio.shield(ws.send_frame(frame, WSMsgType.TEXT))

    sender = asyncio.create_task(follow(room, follower, send_text, ctx.ws.follow))
    follower.on_overrun = sender.cancel
    reader = asyncio.create_task(_read(ws))
    try:
        await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server is stopping
        await cancel_and_wait([sender, reader])
        raise
    client_gone = reader.done() or ws.closed
    await cancel_and_wait([sender])
    if client_gone:  # the client closed or went away: nothing to tell it
        ctx.metrics.closed.labels(str(ws.close_code or GONE)).inc()
        await asyncio.gather(reader, return_exceptions=True)
        return
    code, message = _outcome(sender, follower, room.job_id)
    ctx.metrics.closed.labels(str(code)).inc()
    await _close(ctx, request, ws, code, message)
    await cancel_and_wait([reader])


def _outcome(sender: asyncio.Task[int], follower: Follower, job_id: str) -> tuple[int, bytes]:
    if sender.cancelled() or follower.overrun:
        return TRY_AGAIN_LATER, b"too slow: resume with after="
    error = sender.exception()
    if error is None:
        code = sender.result()
        return code, b"too slow: resume with after=" if code == TRY_AGAIN_LATER else b""
    if isinstance(error, StoreUnavailable | BusError):
        log.warning("logs_ws.unavailable job=%s error=%s", job_id, error)
        return TRY_AGAIN_LATER, b"the log store is unavailable: resume with after="
    if isinstance(error, ConnectionError):
        return GONE, b""
    log.error("logs_ws.failed job=%s", job_id, exc_info=error)
    return INTERNAL_ERROR, b"internal error: resume with after="


async def _read(ws: web.WebSocketResponse) -> None:
    """Take what the client sends (nothing is expected) until it closes or goes away."""
    async for msg in ws:
        if msg.type is WSMsgType.ERROR:
            return


async def _close(
    ctx: RelayContext, request: web.Request, ws: web.WebSocketResponse, code: int, message: bytes
) -> None:
    """Close with `code`. The close frame waits behind what the peer has not read yet (it
    may still read it all), so a peer that reads nothing more is cut off a little later."""
    if code != GONE:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(ctx.ws.close_timeout_s + 1.0):
                await ws.close(code=code, message=message)
    transport = request.transport
    if transport is None:
        return
    if not transport.is_closing() or code == GONE:
        transport.abort()
    else:
        asyncio.get_running_loop().call_later(ctx.ws.abort_after_s, transport.abort)


async def close_sockets(app: web.Application) -> None:
    """on_shutdown: tell every client to go elsewhere (1001); they resume with `after=`."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await asyncio.gather(
                *(
                    ws.close(code=GOING_AWAY, message=b"the log relay is stopping")
                    for ws in list(sockets)
                ),
                return_exceptions=True,
            )
