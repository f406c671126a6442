"""Moving the work offers an earlier version left in its DOCKYARD_WORK stream.

Earlier versions kept offers in a work-queue stream of their own; offers now travel in EVENTS
(see names.OFFERS_STREAM), and a stream's retention cannot be changed in place. So the first
service of this version to start copies each offer still waiting there to its queue's subject
in EVENTS, then deletes the old stream (and with it its consumers). Each copy keeps its
Nats-Msg-Id, so services starting at the same moment, or a start that crashed halfway and
runs again, store each offer once. An offer an old orchestrator had fetched and not yet acked
is copied too: its second claim is refused by the scheduler, so the job still runs once.

Best stop every service of the earlier version (the orchestrators on every host and a
janitor run by cron included) before starting this one. Each service sets the topology up
at its start, and one of the earlier version takes the offers' subjects out of EVENTS again:
the scheduler's next offer then fails, and puts them back (topology.restore_offer_subjects)
before the relay sends it again, so the feed stalls for a few seconds; offers are not lost.
It also makes DOCKYARD_WORK again: offers an earlier scheduler or janitor publishes there
wait for the next start of a service of this version, or the janitor's re-offer.
"""

from __future__ import annotations

import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from dockyard.bus import names

log = logging.getLogger("dockyard.bus.legacy_offers")

_PREFIX = "dockyard.work."
_OWN_HEADERS = frozenset({names.MSG_ID, names.TRACEPARENT, names.TRACESTATE})


async def move_legacy_offers(js: JetStreamContext) -> int:
    """Copy what waits in LEGACY_WORK_STREAM to EVENTS, delete it; return how many were copied.

    A no-op (0) when that stream does not exist. Errors propagate: the caller's `translated`
    maps them, and a later start moves what is left.
    """
    try:
        info = await js.stream_info(names.LEGACY_WORK_STREAM)
    except NotFoundError:
        return 0
    moved = 0
    seq = info.state.first_seq
    while (msg := await _next(js, seq)) is not None:
        subject = msg.subject or ""
        if subject.startswith(_PREFIX) and msg.data is not None:
            queue = subject.removeprefix(_PREFIX)
            await js.publish(
                names.offer_subject(queue),
                msg.data,
                stream=names.OFFERS_STREAM,
                headers=_kept(msg.headers or {}),
            )
            moved += 1
        seq = (msg.seq or seq) + 1
    with contextlib.suppress(NotFoundError):  # another service deleted it meanwhile
        await js.delete_stream(names.LEGACY_WORK_STREAM)
    log.warning("topology.legacy_offers_moved stream=%s offers=%d", names.LEGACY_WORK_STREAM, moved)
    return moved


def _kept(headers: dict[str, str]) -> dict[str, str]:
    """The offer's own headers: its id and trace context, not what the server stored with it
    (such as Nats-Expected-Stream, naming the old stream)."""
    return {k: v for k, v in headers.items() if k in _OWN_HEADERS}


async def _next(js: JetStreamContext, seq: int) -> RawStreamMsg | None:
    """The first message at or after `seq`, or None past the end (or if the stream is gone)."""
    try:
        return await js.get_msg(names.LEGACY_WORK_STREAM, seq=seq, subject=">", next=True)
    except NotFoundError:
        return None
