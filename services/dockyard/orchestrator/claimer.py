"""Taking work: pull offers from a queue's shared durable consumer, claim each, launch it.

A slot (one of DOCKYARD_MAX_JOBS) is held before an offer is pulled, so an orchestrator never
takes more than it can run; the slot passes to the launched attempt, or comes back at once.
A claim is a request to the scheduler, answered once JobClaimed is appended with the expected
version: only a granted claim starts anything. The offer itself stays unacked (kept alive by
the attempt) until the attempt is reported, so a crash before then means a redelivery.

An answer is run only if it is the scheduler's (its signature verifies against the claim
public key, before anything of it is decoded), for this very claim, with a spec that passes
`check_spec`: whoever else can publish on NATS cannot make this orchestrator run a command no
tenant submitted. An answer that fails is not run and the offer is kept for another try.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dockyard.bus import names, protocol
from dockyard.bus.errors import BusError, MessageDecodeError, translated
from dockyard.bus.messages import WorkOffer, decode_work_offer
from dockyard.bus.signing import ClaimVerifier
from dockyard.core.commands import PlannedResource
from dockyard.core.spec import SpecError, check_spec
from dockyard.orchestrator.attempt import Claim
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.registry import Registry, RunningAttempt
from dockyard.orchestrator.retrying import backoff
from dockyard.orchestrator.ticket import Ticket, WorkTicket
from dockyard.runtime.hardening import container_name
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.orchestrator.claimer")

Ask = Callable[[protocol.ClaimRequest], Awaitable[protocol.ClaimAnswer | None]]
Launch = Callable[[Claim, Ticket], None]

# Offers pulled at once, when that many slots are free: claimed side by side.
MAX_FETCH = 32
# Asks of one claim before it counts as unanswered: three claim timeouts (5 s each) stay
# within the offer's ack wait (30 s), so the offer is not redelivered to another meanwhile.
CLAIM_ASKS = 3
# How often a granted claim looks whether the job's earlier attempt here is gone.
EARLIER_POLL_S = 0.05


Rejected = Callable[[str], None]


def claim_asker(
    nc: NatsClient,
    timeout_s: float,
    *,
    verifier: ClaimVerifier | None = None,
    rejected: Rejected | None = None,
) -> Ask:
    """The claim request over NATS, on the orchestrator's own claim subject; None when no
    scheduler answered, or the answer is not one to run (ask again later).

    `verifier`: the scheduler's public claim key; None accepts unsigned answers (development).
    `rejected(why)` counts each answer refused, by why.
    """

    async def send(request: protocol.ClaimRequest) -> Msg:
        """The reply, asking again when one times out: a scheduler slowed by a NATS election
        may grant a claim after we stopped waiting, and handing the offer back then would give
        it to another orchestrator, which the scheduler refuses (the claim is ours), so nobody
        would run the job. Asking again is safe: the same orchestrator's claim stands."""
        for ask_number in range(1, CLAIM_ASKS + 1):
            try:
                return await nc.request(
                    names.claim_subject(request.orchestrator),
                    protocol.encode(request),
                    timeout=timeout_s,
                )
            except nats.errors.TimeoutError:
                if ask_number == CLAIM_ASKS:
                    raise
                log.info(
                    "orchestrator.claim_asked_again job=%s ask=%d",
                    request.job_id,
                    ask_number + 1,
                    extra={"event": "orchestrator.claim_asked_again", "job": request.job_id},
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def ask(request: protocol.ClaimRequest) -> protocol.ClaimAnswer | None:
        try:
            reply = await send(request)
            problem = verifier.problem(reply.data, reply.headers) if verifier else None
            answer = None if problem else protocol.decode_answer(reply.data)
        except (nats.errors.Error, OSError, MessageDecodeError) as exc:
            log.warning(
                "orchestrator.claim_unanswered job=%s error=%s",
                request.job_id,
                exc,
                extra={"event": "orchestrator.claim_unanswered", "job": request.job_id},
            )
            return None
        if answer is not None:
            problem = _not_for(request, answer, signed=verifier is not None)
        if problem is not None or answer is None:
            _reject(request, problem or "unreadable", rejected)
            return None
        return _spec_checked(request, answer, rejected)

    return ask


def _not_for(
    request: protocol.ClaimRequest, answer: protocol.ClaimAnswer, *, signed: bool
) -> str | None:
    """`mismatch` if the answer names another claim (a signed answer replayed); a signed one
    must name its claim, an unsigned one (development, an earlier scheduler) may name none."""
    answered = (answer.job_id, answer.attempt, answer.orchestrator)
    if answered == (request.job_id, request.attempt, request.orchestrator):
        return None
    return "mismatch" if signed or answer.job_id else None


def _spec_checked(
    request: protocol.ClaimRequest, answer: protocol.ClaimAnswer, rejected: Rejected | None
) -> protocol.ClaimAnswer:
    """A granted answer whose spec breaks the spec's rules is refused here: never run.

    Its claim stands, so the offer is dropped and the job, claimed but never started, is
    ended by the janitor (`DOCKYARD_JANITOR_STARTING_TIMEOUT_S`)."""
    if not answer.granted or answer.spec is None:
        return answer
    try:
        check_spec(answer.spec)
    except SpecError as exc:
        _reject(request, "invalid_spec", rejected, detail=str(exc))
        return protocol.ClaimAnswer(granted=False, reason=f"the spec is not valid: {exc}")
    return answer


def _reject(
    request: protocol.ClaimRequest, why: str, rejected: Rejected | None, detail: str = ""
) -> None:
    log.warning(
        "orchestrator.claim_answer_rejected job=%s attempt=%d why=%s%s: not run",
        request.job_id,
        request.attempt,
        why,
        f" ({detail})" if detail else "",
        extra={"event": "orchestrator.claim_answer_rejected", "job": request.job_id, "why": why},
    )
    if rejected is not None:
        rejected(why)


class Claimer:
    """One queue's pull loop; `run` returns once `stopping` is set (within a fetch timeout)."""

    def __init__(
        self,
        *,
        nc: NatsClient,
        js: JetStreamContext,
        queue: str,
        config: OrchestratorConfig,
        slots: asyncio.Semaphore,
        registry: Registry,
        launch: Launch,
        ask: Ask,
        engine: str | None = None,
        engine_up: Callable[[asyncio.Event], Awaitable[bool]] | None = None,
        egress_ok: Callable[[], bool] | None = None,
    ) -> None:
        """`engine_up(stopping)`: True once the Docker engine answers, False if stopping
        first; asked before each batch, so that nothing is claimed while it is away.
        `egress_ok()`: whether `egress` offers may be claimed (the deny list is enforced)."""
        self._engine_up = engine_up
        self._egress_ok = egress_ok
        self._nc = nc
        self._js = js
        self._queue = queue
        self._config = config
        self._slots = slots
        self._registry = registry
        self._launch = launch
        self._ask = ask
        self._engine = engine
        self.claimed = 0
        # Egress offers this orchestrator may not take, each held until its plain nak.
        self._left: dict[asyncio.Task[None], Msg] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        sub = await self._subscribe(stopping)
        if sub is None:
            return
        failures = 0
        try:
            while not stopping.is_set():
                if not await _acquire_or_stop(self._slots, stopping):
                    return
                held = 1 + await _take_free(self._slots, MAX_FETCH - 1)
                launched = 0
                try:
                    if self._engine_up is not None and not await self._engine_up(stopping):
                        return  # stopping while the engine was away (the slots go back)
                    msgs = await self._fetch(sub, held)
                    failures = 0
                    # Side by side: the scheduler commits claims that arrive together at once.
                    launched = sum(await asyncio.gather(*(self._take(m, stopping) for m in msgs)))
                except BusError as exc:
                    failures += 1
                    log.info("orchestrator.fetch_failed queue=%s error=%s", self._queue, exc)
                    await asyncio.sleep(backoff(failures))
                finally:
                    for _ in range(held - launched):
                        self._slots.release()
        finally:
            await self._hand_back_left()
            await _quietly(sub.unsubscribe())

    async def _subscribe(self, stopping: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        failures = 0
        while not stopping.is_set():
            try:
                with translated():
                    return await self._js.pull_subscribe_bind(
                        names.offer_durable(self._queue), stream=names.OFFERS_STREAM
                    )
            except BusError as exc:
                failures += 1
                log.warning("orchestrator.bind_failed queue=%s error=%s", self._queue, exc)
                await asyncio.sleep(backoff(failures))
        return None

    async def _fetch(self, sub: JetStreamContext.PullSubscription, n: int) -> list[Msg]:
        try:
            with translated():
                return await sub.fetch(n, timeout=self._config.fetch_timeout_s)
        except BusError as exc:
            if isinstance(exc.__cause__, TimeoutError | nats.errors.TimeoutError):
                return []  # nothing offered meanwhile
            raise

    async def _take(self, msg: Msg, stopping: asyncio.Event) -> bool:
        if stopping.is_set():
            await _quietly(msg.nak())  # at once: another orchestrator takes it
            return False
        return await self._offer(msg, stopping)

    async def _offer(self, msg: Msg, stopping: asyncio.Event) -> bool:
        """Claim and launch one offer; True if an attempt now owns the slot."""
        try:
            offer = decode_work_offer(msg.data)
        except MessageDecodeError as exc:
            log.error("orchestrator.offer_poison error=%s", exc)
            await _quietly(msg.term())
            return False
        running = self._registry.get(offer.job_id)
        if running is not None and running.attempt == offer.attempt:
            await _adopt(running, msg)  # redelivered while it runs here
            return False
        if self._registry.is_done(offer.job_id, offer.attempt):
            await _quietly(msg.ack())  # ran here already (or was recovered): never again
            return False
        if offer.egress and self._egress_ok is not None and not self._egress_ok():
            # Unclaimed, handed back: an orchestrator that enforces the deny list takes it.
            log.info(
                "orchestrator.egress_offer_left job=%s attempt=%d: the egress deny list is "
                "not enforced here",
                offer.job_id,
                offer.attempt,
                extra={"event": "orchestrator.egress_offer_left", "job": offer.job_id},
            )
            self._leave(msg)
            return False
        request = protocol.ClaimRequest(
            job_id=offer.job_id,
            attempt=offer.attempt,
            orchestrator=self._config.orchestrator_id,
            resources=[
                PlannedResource(
                    kind="container",
                    name=container_name(offer.job_id, offer.attempt),
                    engine=self._engine,
                )
            ],
            meta=tracing.message_metadata(msg.headers),
        )
        answer = await self._ask(request)
        if answer is None or (not answer.granted and answer.retry):
            await self._retry_later(msg)
            return False
        if answer.granted and answer.spec is None:
            # Granted but nothing to run: a scheduler bug. The claim is ours, so keep the
            # offer for another try rather than drop a claimed job.
            log.error("orchestrator.claim_without_spec job=%s", offer.job_id)
            await self._retry_later(msg)
            return False
        if not answer.granted or answer.spec is None:
            log.info(
                "orchestrator.claim_refused job=%s attempt=%d reason=%s",
                offer.job_id,
                offer.attempt,
                answer.reason,
                extra={"event": "orchestrator.claim_refused", "job": offer.job_id},
            )
            await _quietly(msg.ack())  # the attempt is someone else's, or over
            return False
        running = self._registry.get(offer.job_id)
        if running is not None and running.attempt == offer.attempt:
            await _adopt(running, msg)  # a copy, pulled in the same fetch, launched it meanwhile
            return False
        if running is not None and not await self._earlier_gone(running, offer, msg, stopping):
            await self._retry_later(msg)  # stopping: the claim stands, this offer comes back
            return False
        claim = Claim(
            job_id=offer.job_id,
            attempt=offer.attempt,
            spec=answer.spec,
            tenant=answer.tenant,
            log_seq=answer.log_seq,
            log_bytes=answer.log_bytes,
            recorded=[r for r in request.resources if r.name in answer.recorded],
            meta=answer.meta,
        )
        self.claimed += 1
        self._launch(claim, WorkTicket(msg, self._config.keepalive_s))
        return True

    async def _earlier_gone(
        self, running: RunningAttempt, offer: WorkOffer, msg: Msg, stopping: asyncio.Event
    ) -> bool:
        """Granted a later attempt of a job whose earlier one still runs here (this host was
        cut off meanwhile): that one is stale, so it is stopped, and the offer is kept until
        it is gone. Handing the offer back instead would lose the job: the claim is ours now,
        so any other orchestrator is refused and acks the offer. False if stopping first."""
        log.info(
            "orchestrator.earlier_attempt_here job=%s attempt=%d: attempt %d still runs here; "
            "stopping it before this one starts",
            running.job_id,
            offer.attempt,
            running.attempt,
            extra={"event": "orchestrator.earlier_attempt_here", "job": running.job_id},
        )
        running.request_stop(
            StopRequest("stop_order", f"attempt {offer.attempt} was given to this orchestrator")
        )
        loop = asyncio.get_running_loop()
        kept_at = loop.time()
        while self._registry.get(running.job_id) is running:
            if stopping.is_set():
                return False
            if loop.time() - kept_at >= self._config.keepalive_s:
                kept_at = loop.time()
                await _quietly(msg.in_progress())
            await asyncio.sleep(EARLIER_POLL_S)
        return True

    def _leave(self, msg: Msg) -> None:
        """Hold an offer for others for the claim backoff, then nak it without a delay.

        Not `nak(delay=...)`: on a consumer with a BackOff list, JetStream (2.15) keeps the
        delay of the first nak only and then redelivers on the list's steps (30 s, 60 s...),
        so an orchestrator that enforces the deny list would wait minutes for the offer. A
        plain nak goes to the pull request that waited longest, which is another's."""
        delay = self._config.claim_backoff.delay(_deliveries(msg))

        async def hold() -> None:
            await asyncio.sleep(delay)
            await _quietly(msg.nak())

        task = asyncio.create_task(hold(), name="egress offer held")
        self._left[task] = msg
        task.add_done_callback(lambda done: self._left.pop(done, None))

    async def _hand_back_left(self) -> None:
        """Stopping: every offer still held goes back at once."""
        held = list(self._left.items())
        self._left.clear()
        for task, _ in held:
            task.cancel()
        await asyncio.gather(*(task for task, _ in held), return_exceptions=True)
        await asyncio.gather(*(_quietly(msg.nak()) for _, msg in held))

    async def _retry_later(self, msg: Msg) -> None:
        """Hand the offer back for another try, later each time it comes back unclaimed."""
        await _quietly(msg.nak(delay=self._config.claim_backoff.delay(_deliveries(msg))))


def _deliveries(msg: Msg) -> int:
    """How many times JetStream delivered this offer (1 for a message that cannot say)."""
    try:
        return int(msg.metadata.num_delivered)
    except (nats.errors.Error, AttributeError, TypeError, ValueError):
        return 1


async def _adopt(running: RunningAttempt, msg: Msg) -> None:
    """Another delivery of a running attempt's offer: kept alive with it, or acked now if the
    attempt is already reported."""
    if not running.ticket.adopt(msg):
        await _quietly(msg.ack())


async def _take_free(slots: asyncio.Semaphore, most: int) -> int:
    """Slots free right now, up to `most` (acquire does not wait while one is free)."""
    taken = 0
    while taken < most and not slots.locked():
        await slots.acquire()
        taken += 1
    return taken


async def _acquire_or_stop(slots: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
    """A slot, or False once stopping (holding none)."""
    if not slots.locked():
        await slots.acquire()
        return True
    acquire = asyncio.create_task(slots.acquire())
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not acquire.done():
            acquire.cancel()
        await asyncio.gather(acquire, stop, return_exceptions=True)
    if acquire.cancelled():
        return False
    if stopping.is_set():
        slots.release()
        return False
    return True


async def _quietly(aw: Awaitable[object]) -> None:
    """An ack, nak or unsubscribe whose failure changes nothing (the offer is redelivered)."""
    try:
        await aw
    except (nats.errors.Error, OSError) as exc:
        log.info("orchestrator.ack_failed error=%s", exc)
