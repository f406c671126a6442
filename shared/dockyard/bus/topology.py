"""Every JetStream stream, durable consumer and KV bucket Dockyard uses, `ensure_topology`, and
`await_topology` for the services that may only look.

The scheduler (the one role allowed to, bus/permissions.py) calls `ensure_topology` at start;
it creates what is missing and updates what differs, so it is idempotent and safe when several
schedulers start at the same moment (the server treats a create with an identical config as a
no-op, and a differing one we update). Orchestrators, the log relay and the janitor may not
create or change any of it: they call `await_topology`, which waits (saying so in the log)
until what they need exists, so the services start in any order.

Durability: the servers run with `sync_interval: always` (written by dockyard.embedded's config;
set it in any NATS you bring yourself). Jepsen's 2025 analysis of NATS JetStream showed that with
the default, an fsync every 2 minutes, a crash or power loss on a node drops writes JetStream had
already acknowledged; the outbox relay advances its checkpoint on those acks, so a lost acked
write would be an event that never reaches any consumer. The cost is an fsync per stored write:
a publish waits for the disk's flush, so throughput follows the disk's fsync rate, not the CPU.
On the development VM (tests/benchmarks/bench_bus.py) one-at-a-time publishes dropped from
~3 000/s to ~900-1 500/s and 256-in-flight ones from ~16 000-30 000/s to ~1 600-4 000/s; the
relay pipelines its publishes for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)
from nats.js.errors import APIError

from dockyard.bus import names
from dockyard.bus.deployment import deployment_id
from dockyard.bus.errors import BusUnavailable, TopologyError, translate, translated
from dockyard.bus.legacy_offers import move_legacy_offers
from dockyard.process.backoff import Backoff

log = logging.getLogger("dockyard.bus.topology")

# The duplicate window must outlast the longest gap between the first publish of an event and
# its republication after an outbox relay crash: the relay's restart (a supervisor restarts a
# crash-looping process within seconds, Kubernetes backs off up to 5 minutes) or a standby's
# takeover once PostgreSQL has dropped the dead holder's lock (the lock connection's keepalive
# gives up after ~30 s). 10 minutes covers both with margin. Its cost is memory: the server
# keeps every message id of the window, ~100 bytes each, so 60 MB at a sustained 1000 events/s.
# Past the window a republished event is stored again; consumers tolerate duplicates anyway.
DUPLICATE_WINDOW_S: Final = 10 * 60.0

# Reports and log batches are republished only by their producer's own retry of a publish that
# timed out, seconds later: the server's default window is plenty.
SHORT_DUPLICATE_WINDOW_S: Final = 2 * 60.0

# PostgreSQL is the source of truth; the EVENTS stream is a delivery channel, so it keeps a week
# for consumers to catch up after an outage, and older history is read from the database.
EVENTS_MAX_AGE_S: Final = 7 * 24 * 3600.0

# Log batches wait here for the log relay, which persists them; a day covers a long outage of it.
LOGS_MAX_AGE_S: Final = 24 * 3600.0

# A single message is at most the server's max_payload; this guards against one huge log batch.
MAX_MSG_BYTES: Final = 8 * 1024 * 1024  # the servers' max_payload: a 1 MiB spec fits


@dataclass(frozen=True)
class RedeliveryPolicy:
    """How a durable consumer redelivers a message that was not acked.

    The first entry of `backoff` is also the ack wait (JetStream forces it): a consumer that
    needs longer sends in-progress acks. `max_deliver` bounds a message that crashes its
    consumer every time; naks with a delay count as deliveries too, so it is generous.
    """

    backoff: tuple[float, ...]
    max_deliver: int
    max_ack_pending: int

    @property
    def ack_wait(self) -> float:
        return self.backoff[0]


# Offers: claiming is one request/reply, so 30 s without an ack means the orchestrator died.
# 50 deliveries at up to 5 minutes apart is over 3 hours of retries; an offer abandoned after
# that is a job left queued, which the janitor re-offers (as one that waited past EVENTS'
# max age for a queue nobody served). Acked offers stay in EVENTS until that age: a queue's
# durable deleted by hand and made again would deliver them all again, and each claim of an
# attempt already claimed or over is refused.
OFFER_POLICY: Final = RedeliveryPolicy(
    backoff=(30.0, 60.0, 120.0, 300.0), max_deliver=50, max_ack_pending=1000
)
# Reports: the scheduler appends to PostgreSQL; it naks with a delay while the database is down.
REPORTS_POLICY: Final = RedeliveryPolicy(
    backoff=(30.0, 60.0, 120.0, 300.0), max_deliver=50, max_ack_pending=1000
)
# Logs: the log relay writes a batch in one statement; many batches in flight for throughput.
# A short first ack wait: after a relay crash, what it had fetched but not stored comes back
# within seconds, and tailing clients wait at that gap meanwhile (the relay's in-progress acks
# keep slow writes alive).
LOGS_POLICY: Final = RedeliveryPolicy(
    backoff=(5.0, 10.0, 30.0, 60.0), max_deliver=50, max_ack_pending=10_000
)


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    """The three streams, on file storage, each with `replicas` copies."""

    def stream(
        name: str, subjects: list[str], retention: RetentionPolicy, **kw: object
    ) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subjects,
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=replicas,
            discard=DiscardPolicy.OLD,
            max_msg_size=MAX_MSG_BYTES,
        ).evolve(**kw)

    return [
        stream(
            names.EVENTS_STREAM,
            # Work offers too (names.OFFERS_STREAM): each in the atomic batch of its JobQueued.
            [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS],
            RetentionPolicy.LIMITS,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
            # The outbox relay publishes in atomic batches: one fsync a batch (event_batches).
            allow_atomic=True,
            # Direct gets name the subject in the request's subject, so an orchestrator's
            # permissions can allow one event type's last message and nothing else.
            allow_direct=True,
        ),
        stream(
            names.REPORTS_STREAM,
            [names.REPORTS_SUBJECTS],
            RetentionPolicy.WORK_QUEUE,
            duplicate_window=SHORT_DUPLICATE_WINDOW_S,
        ),
        stream(
            names.LOGS_STREAM,
            [names.LOGS_SUBJECTS],
            RetentionPolicy.LIMITS,
            max_age=LOGS_MAX_AGE_S,
            duplicate_window=SHORT_DUPLICATE_WINDOW_S,
            # Uncompressed: S2 cut the disk a day of logs takes to about a sixth, but NATS
            # compresses on the write path, and on 2 cores it cost 15-25% of the rate
            # JetStream acks log lines at (0.85-0.93 against 1.15-1.21 M lines/s) with no
            # kernel fsync work saved that the benchmarks could see. A stream made
            # compressed by an earlier version is set back in place.
            compression=StoreCompression.NONE,
            allow_direct=True,  # an orchestrator reads only its own jobs' last batch
        ),
    ]


def _durable(name: str, subject: str, policy: RedeliveryPolicy) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=policy.ack_wait,
        backoff=list(policy.backoff),
        max_deliver=policy.max_deliver,
        max_ack_pending=policy.max_ack_pending,
    )


def consumer_configs(queues: Iterable[str] = ("default",)) -> list[tuple[str, ConsumerConfig]]:
    """(stream, pull consumer config) for every durable: reports, logs and one per work queue."""
    consumers = [
        (
            names.REPORTS_STREAM,
            _durable(names.REPORTS_DURABLE, names.REPORTS_SUBJECTS, REPORTS_POLICY),
        ),
        # LOGS_FILTER: also the subjects of batches an earlier version left in the stream.
        (names.LOGS_STREAM, _durable(names.LOGS_DURABLE, names.LOGS_FILTER, LOGS_POLICY)),
    ]
    for queue in dict.fromkeys(queues):  # ordered and without repeats
        durable = _durable(names.offer_durable(queue), names.offer_subject(queue), OFFER_POLICY)
        consumers.append((names.OFFERS_STREAM, durable))
    return consumers


def heartbeat_bucket_config(lease_s: float = 15.0, replicas: int = 1) -> KeyValueConfig:
    """A key per orchestrator that expires `lease_s` after its last heartbeat."""
    return KeyValueConfig(
        bucket=names.HEARTBEATS_BUCKET,
        history=1,
        ttl=lease_s,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def ensure_topology(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    lease_s: float = 15.0,
    queues: Sequence[str] = ("default",),
) -> str:
    """Create or update every stream, durable consumer and the heartbeat bucket, move offers an
    earlier version left (legacy_offers.py); return the installation's id (made on first use,
    see deployment.py).

    Raises BusUnavailable when JetStream does not answer and TopologyError when something
    exists with a config that cannot be changed in place (e.g. another retention policy).
    """
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    if lease_s <= 0:
        raise ValueError("lease_s must be positive")
    with translated():
        for config in stream_configs(replicas):
            await _ensure_stream(js, config)
        await move_legacy_offers(js)
        for stream, consumer in consumer_configs(queues):
            # A durable create with a differing config updates it (the request's action is
            # "create or update"); an identical one is a no-op, so concurrent starts agree.
            what = f"consumer {consumer.durable_name} on {stream}"
            await _refusal_as_topology_error(js.add_consumer(stream, consumer), what)
        await _ensure_bucket(js, heartbeat_bucket_config(lease_s, replicas))
    return await deployment_id(js, replicas=replicas)


# While JetStream does not answer at start (a cluster still electing its meta leader, a node
# restarting), ensure_topology is asked again this often.
UNAVAILABLE_RETRY: Final = Backoff(base_s=0.2, cap_s=5.0)


async def ensure_topology_when_up(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    lease_s: float = 15.0,
    queues: Sequence[str] = ("default",),
    retry: Backoff = UNAVAILABLE_RETRY,
) -> str:
    """`ensure_topology`, asked again for as long as JetStream is unavailable: a service
    started with (or just after) its NATS cluster waits for a meta leader instead of exiting
    (a stream with three replicas can be made only once the nodes have elected one). A
    refusal (TopologyError, BusRejected) is raised at once."""
    failures = 0
    while True:
        try:
            return await ensure_topology(js, replicas=replicas, lease_s=lease_s, queues=queues)
        except BusUnavailable as error:
            failures += 1
            log.warning(
                "topology.waiting failures=%d error=%s: JetStream does not answer yet "
                "(a cluster still forming?); asking again",
                failures,
                error,
                extra={"event": "topology.waiting"},
            )
            await asyncio.sleep(retry.delay(failures))


async def ensure_offer_consumers(js: JetStreamContext, queues: Iterable[str]) -> None:
    """Create (or update) the offer durables of `queues` only: what `dockyard credentials
    orchestrator` does for a new host's queues, so it needs no scheduler restart."""
    with translated():
        for stream, consumer in consumer_configs(queues)[2:]:  # past reports' and logs'
            what = f"consumer {consumer.durable_name} on {stream}"
            await _refusal_as_topology_error(js.add_consumer(stream, consumer), what)


async def restore_offer_subjects(js: JetStreamContext) -> bool:
    """Put the offers' subjects back on EVENTS if they are gone; whether they were.

    A service of an earlier version sets EVENTS up with its own subjects only when it starts
    (legacy_offers.py); every offer, and the event feed behind it, would fail until a
    service of this version started again. The publishers call this when a publish holding
    an offer fails. Raises BusUnavailable / BusRejected as `translated` maps them.
    """
    with translated():
        config = (await js.stream_info(names.EVENTS_STREAM)).config
        subjects = list(config.subjects or [])
        if names.OFFERS_SUBJECTS in subjects:
            return False
        await js.update_stream(config.evolve(subjects=[*subjects, names.OFFERS_SUBJECTS]))
    log.warning(
        "topology.offer_subjects_restored stream=%s: a service of an earlier version set it up",
        names.EVENTS_STREAM,
    )
    return True


# JetStream's answers that mean "this config cannot be applied" though sent as 500s, not 400s:
# a consumer or stream field that cannot change in place, replicas without a cluster.
_STREAM_NAME_IN_USE = 10058
_REFUSED = frozenset({10012, 10052, 10074})


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise _as_topology_error(exc, f"stream {config.name}") from exc
        await _refusal_as_topology_error(js.update_stream(config), f"stream {config.name}")


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.create_key_value(config)
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise _as_topology_error(exc, f"bucket {config.bucket}") from exc
        # The bucket exists with another TTL or replica count: change only those, keeping the
        # rest of the stream config nats-py chose for a KV bucket.
        ttl = config.ttl if config.ttl is not None else 0.0
        current = (await js.stream_info(f"KV_{config.bucket}")).config
        updated = current.evolve(
            max_age=ttl,
            duplicate_window=min(SHORT_DUPLICATE_WINDOW_S, ttl),
            num_replicas=config.replicas,
        )
        await _refusal_as_topology_error(js.update_stream(updated), f"bucket {config.bucket}")


async def _refusal_as_topology_error(call: Awaitable[object], what: str) -> None:
    try:
        await call
    except APIError as exc:
        raise _as_topology_error(exc, what) from exc


def _as_topology_error(exc: APIError, what: str) -> Exception:
    """A refusal becomes TopologyError; anything else stays as is, for `translated` to map."""
    if exc.code == 400 or exc.err_code in _REFUSED:
        return TopologyError(f"{what}: {exc.description}", code=exc.code, err_code=exc.err_code)
    return exc


# --- verifying, for the services that may not create ----------------------------------------


@dataclass(frozen=True)
class Needs:
    """What one service needs to exist before it starts its work."""

    streams: tuple[str, ...] = ()
    consumers: tuple[tuple[str, str], ...] = ()  # (stream, durable)
    buckets: tuple[str, ...] = ()
    deployment: bool = False  # the installation's id (deployment.py)


def orchestrator_needs(queues: Iterable[str]) -> Needs:
    offers = tuple((names.OFFERS_STREAM, names.offer_durable(q)) for q in dict.fromkeys(queues))
    return Needs(consumers=offers, buckets=(names.HEARTBEATS_BUCKET,), deployment=True)


LOG_RELAY_NEEDS: Final = Needs(consumers=((names.LOGS_STREAM, names.LOGS_DURABLE),))
JANITOR_NEEDS: Final = Needs(
    streams=(names.EVENTS_STREAM,), buckets=(names.HEARTBEATS_BUCKET,), deployment=True
)


@dataclass
class TopologyWait:
    """Whether a service still waits for the topology, and for what (for /readyz and logs)."""

    missing: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def ready(self) -> bool:
        return self.done


async def missing_topology(js: JetStreamContext, needs: Needs) -> tuple[list[str], str]:
    """(what of `needs` does not exist yet, the installation's id or "").

    Raises BusUnavailable when JetStream does not answer (or, as NATS shows a permission it
    refused, times out: the connection's error log names the subject).
    """
    missing: list[str] = []
    deployment = ""
    try:
        for stream in needs.streams:
            if not await _found(js.stream_info(stream)):
                missing.append(f"stream {stream}")
        for stream, durable in needs.consumers:
            if not await _found(js.consumer_info(stream, durable)):
                missing.append(f"consumer {durable} on {stream}")
        for bucket in needs.buckets:
            if not await _found(js.key_value(bucket)):
                missing.append(f"bucket {bucket}")
        if needs.deployment:
            deployment = await _read_deployment(js)
            if not deployment:
                missing.append(f"the installation id in bucket {names.META_BUCKET}")
    except (nats.errors.Error, OSError) as exc:
        raise translate(exc) from exc
    return missing, deployment


async def await_topology(
    js: JetStreamContext,
    needs: Needs,
    *,
    who: str,
    wait: TopologyWait | None = None,
    max_delay_s: float = 5.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Wait until everything `needs` names exists; the installation's id ("" if not needed).

    Never creates anything. Logs `topology.waiting` when it starts waiting, then every
    minute while it still does, and `topology.found` once it is all there.
    """
    wait = wait if wait is not None else TopologyWait()
    failures, last_said = 0, -float("inf")
    while True:
        try:
            missing, deployment = await missing_topology(js, needs)
            reason = ""
        except BusUnavailable as exc:
            missing, deployment, reason = ["JetStream's answer"], "", f" ({exc})"
        wait.missing = missing
        if not missing:
            wait.done = True
            if failures:
                log.info("topology.found who=%s", who, extra={"event": "topology.found"})
            return deployment
        failures += 1
        if time.monotonic() - last_said >= 60.0:
            last_said = time.monotonic()
            log.warning(
                "topology.waiting who=%s: waiting for the scheduler to create %s%s",
                who,
                ", ".join(missing),
                reason,
                extra={"event": "topology.waiting", "who": who, "missing": missing},
            )
        await sleep(min(max_delay_s, 0.1 * 2 ** min(failures, 10)))


async def _found(call: Awaitable[object]) -> bool:
    try:
        await call
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _read_deployment(js: JetStreamContext) -> str:
    try:
        bucket = await js.key_value(names.META_BUCKET)
        entry = await bucket.get(names.DEPLOYMENT_KEY)
    except nats.js.errors.NotFoundError:  # no bucket, or no key yet
        return ""
    return (entry.value or b"").decode()
