"""Issue #19 (F1) against a real nats-server with decentralized JWT auth, as `dockyard up` runs it:
a client without credentials is refused; each role may do what its code does and nothing else
(bus/permissions.py); only the scheduler creates the topology, the others wait for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dockyard.bus import BusUnavailable, close, connect, ensure_topology, jetstream, names
from dockyard.bus.connection import CredentialsUnusable, Security
from dockyard.bus.permissions import SERVICE_ROLES, Role, kv_stream
from dockyard.bus.topology import (
    JANITOR_NEEDS,
    LOG_RELAY_NEEDS,
    await_topology,
    orchestrator_needs,
)
from tests.support.secured_nats import SecuredNats, delete_streams, secured_nats, watched

ORCH, OTHER = "orch-a", "orch-b"
EVENTS, REPORTS, LOGS = names.EVENTS_STREAM, names.REPORTS_STREAM, names.LOGS_STREAM
HEARTBEATS = kv_stream(names.HEARTBEATS_BUCKET)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecuredNats]:
    async with secured_nats(tmp_path_factory.mktemp("secured")) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def topology(secured: SecuredNats) -> AsyncIterator[str]:
    """The topology as the scheduler makes it (with its own identity); the installation id."""
    nc = await connect(secured.url, "scheduler", security=_security(secured, "scheduler"))
    try:
        deployment = await ensure_topology(jetstream(nc), queues=("default",))
    finally:
        await close(nc)
    yield deployment
    await delete_streams(secured.url, secured.creds("admin"))


def _security(secured: SecuredNats, role: Role, name: str | None = None) -> Security:
    return Security(creds=secured.creds(role, name if role == "orchestrator" else None))


def _creds(secured: SecuredNats, role: Role) -> Path:
    return secured.creds(role, ORCH if role == "orchestrator" else None)


async def test_a_client_without_credentials_is_refused(secured: SecuredNats) -> None:
    raw = NatsClient()
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await raw.connect(secured.url, allow_reconnect=False, connect_timeout=5)
    await raw.close()
    # The services' own connect says so at once, instead of retrying for ever.
    with pytest.raises(CredentialsUnusable, match="refused"):
        await asyncio.wait_for(connect(secured.url, "anonymous"), 10)


async def test_a_credential_signed_by_another_account_is_refused(
    secured: SecuredNats, tmp_path: Path
) -> None:
    from dockyard.stack.nats_credentials import NatsCredentials

    stranger = NatsCredentials(tmp_path / "elsewhere")
    stranger.ensure()
    forged = stranger.mint("admin")
    with pytest.raises(CredentialsUnusable):
        await asyncio.wait_for(connect(secured.url, "forged", security=Security(creds=forged)), 10)


# What each role must never do. Publishes to `$JS.API` are requests; the server refuses them
# before JetStream sees them.
FORBIDDEN: list[tuple[Role, str, str, str]] = [
    *[(role, "sub", ">", "") for role in SERVICE_ROLES],
    *[(role, "sub", "_INBOX.>", "") for role in SERVICE_ROLES],
    *[
        (role, "pub", f"$JS.API.STREAM.DELETE.{stream}", "")
        for role in SERVICE_ROLES
        for stream in (EVENTS, REPORTS, LOGS, HEARTBEATS)
    ],
    *[(role, "pub", f"$JS.API.STREAM.PURGE.{EVENTS}", "") for role in SERVICE_ROLES],
    *[
        (role, "pub", f"$JS.API.CONSUMER.DELETE.{EVENTS}.{names.offer_durable('default')}", "")
        for role in SERVICE_ROLES
    ],
    # An orchestrator: as itself only, its own queues only, and no reading of others' traffic.
    ("orchestrator", "sub", names.EVENTS_SUBJECTS, ""),
    ("orchestrator", "sub", names.CLAIMS_SUBJECTS, ""),
    ("orchestrator", "sub", names.CLAIMS_SUBJECTS, names.CLAIMS_QUEUE_GROUP),
    ("orchestrator", "sub", names.REPORTS_SUBJECTS, ""),
    ("orchestrator", "sub", "dockyard.logs.>", ""),
    ("orchestrator", "sub", names.control_subject(OTHER), ""),
    ("orchestrator", "sub", f"_INBOX_orchestrator_{OTHER}.>", ""),
    ("orchestrator", "pub", names.report_batch_subject(OTHER), ""),
    ("orchestrator", "pub", names.report_subject("some-job"), ""),
    ("orchestrator", "pub", names.log_subject(OTHER, "some-job"), ""),
    ("orchestrator", "pub", names.legacy_log_subject("some-job"), ""),
    ("orchestrator", "pub", names.claim_subject(OTHER), ""),
    ("orchestrator", "pub", names.event_subject("some-job", "job_succeeded"), ""),
    ("orchestrator", "pub", names.offer_subject("default"), ""),
    ("orchestrator", "pub", f"$KV.{names.HEARTBEATS_BUCKET}.{names.heartbeat_key(OTHER)}", ""),
    ("orchestrator", "pub", f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS}.{names.offer_durable('gpu')}", ""),
    ("orchestrator", "pub", f"$JS.API.STREAM.MSG.GET.{EVENTS}", ""),
    ("orchestrator", "pub", f"$JS.API.STREAM.MSG.GET.{LOGS}", ""),
    ("orchestrator", "pub", f"$JS.API.DIRECT.GET.{EVENTS}.dockyard.events.j.job_submitted", ""),
    ("orchestrator", "pub", f"$JS.API.DIRECT.GET.{LOGS}.{names.log_subject(OTHER, 'j')}", ""),
    ("orchestrator", "pub", f"$JS.API.STREAM.CREATE.{EVENTS}", ""),
    ("orchestrator", "pub", f"$JS.API.STREAM.UPDATE.{EVENTS}", ""),
    ("orchestrator", "pub", f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS}.offers-default", ""),
    ("orchestrator", "pub", f"$JS.API.CONSUMER.CREATE.{EVENTS}.x.dockyard.events.>", ""),
    # The scheduler answers claims only in its queue group.
    ("scheduler", "sub", names.CLAIMS_SUBJECTS, ""),
    ("scheduler", "sub", names.CLAIMS_SUBJECTS, "eavesdroppers"),
    ("scheduler", "pub", names.report_batch_subject(ORCH), ""),
    ("scheduler", "pub", names.log_subject(ORCH, "j"), ""),
    # The log relay reads logs; it writes no events, reports or streams.
    ("log-relay", "pub", names.event_subject("some-job", "job_succeeded"), ""),
    ("log-relay", "pub", names.report_batch_subject(ORCH), ""),
    ("log-relay", "pub", f"$JS.API.STREAM.CREATE.{LOGS}", ""),
    ("log-relay", "pub", f"$JS.API.CONSUMER.DURABLE.CREATE.{LOGS}.{names.LOGS_DURABLE}", ""),
    ("log-relay", "sub", names.CLAIMS_SUBJECTS, names.CLAIMS_QUEUE_GROUP),
    # The janitor reads heartbeats and offers state; it changes no stream, forges no beat.
    ("janitor", "pub", f"$JS.API.STREAM.UPDATE.{EVENTS}", ""),
    ("janitor", "pub", f"$KV.{names.HEARTBEATS_BUCKET}.{names.heartbeat_key(ORCH)}", ""),
    ("janitor", "pub", names.report_batch_subject(ORCH), ""),
    ("janitor", "sub", names.EVENTS_SUBJECTS, ""),
]


@pytest.mark.parametrize(("role", "kind", "subject", "queue"), FORBIDDEN)
async def test_each_role_is_refused_what_it_must_not_do(
    secured: SecuredNats, topology: str, role: Role, kind: str, subject: str, queue: str
) -> None:
    async with watched(secured.url, _creds(secured, role)) as client:
        if kind == "sub":
            await client.nc.subscribe(subject, queue=queue)
        else:
            await client.nc.publish(subject, b"{}", reply=client.nc.new_inbox())
        await client.nc.flush()
        assert await client.refused(subject)
    # Nothing was deleted, purged or changed behind the refusal.
    admin = await nats.connect(secured.url, user_credentials=str(secured.creds("admin")))
    try:
        info = await admin.jsm().stream_info(EVENTS)
        assert info.config.subjects == [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS]
        await admin.jsm().consumer_info(EVENTS, names.offer_durable("default"))
    finally:
        await admin.close()


async def test_only_the_scheduler_creates_the_topology(
    secured: SecuredNats, topology: str, caplog: pytest.LogCaptureFixture
) -> None:
    for role in ("orchestrator", "log-relay", "janitor"):
        nc = await connect(secured.url, role, security=_security(secured, role, ORCH))
        try:
            with pytest.raises(BusUnavailable):  # refused: the request is never answered
                await ensure_topology(jetstream(nc, timeout_s=1.0))
        finally:
            await close(nc)
    assert "nats.permission_denied" in caplog.text


async def test_orchestrator_waits_for_the_scheduler_to_create_its_queue(
    secured: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dockyard")
    orchestrator = await connect(
        secured.url, "orchestrator", security=_security(secured, "orchestrator", ORCH)
    )
    scheduler = await connect(secured.url, "scheduler", security=_security(secured, "scheduler"))
    try:
        waiting = asyncio.create_task(
            await_topology(jetstream(orchestrator), orchestrator_needs(["default"]), who=ORCH)
        )
        async with asyncio.timeout(10):
            while "waiting for the scheduler to create" not in caplog.text:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not waiting.done()
        deployment = await ensure_topology(jetstream(scheduler))
        assert await asyncio.wait_for(waiting, 15) == deployment
        assert "consumer offers-default on DOCKYARD_EVENTS" in caplog.text
    finally:
        await close(orchestrator)
        await close(scheduler)
        await delete_streams(secured.url, secured.creds("admin"))


async def test_an_orchestrator_pulls_claims_reports_logs_and_heartbeats_as_itself(
    secured: SecuredNats, topology: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = await connect(secured.url, "scheduler", security=_security(secured, "scheduler"))
    orch = await connect(
        secured.url, "orchestrator", security=_security(secured, "orchestrator", ORCH)
    )
    try:
        sjs, ojs = jetstream(scheduler), jetstream(orch)
        assert await await_topology(ojs, orchestrator_needs(["default"]), who=ORCH) == topology

        async def answer(msg: Msg) -> None:
            assert msg.subject == names.claim_subject(ORCH)
            await msg.respond(b"granted")

        await scheduler.subscribe(names.CLAIMS_SUBJECTS, queue=names.CLAIMS_QUEUE_GROUP, cb=answer)
        received: asyncio.Queue[Msg] = asyncio.Queue()
        await orch.subscribe(names.control_subject(ORCH), cb=received.put)
        await orch.subscribe(names.events_of_type("cancel_requested"), cb=received.put)
        await scheduler.flush()
        await orch.flush()

        # An offer (the scheduler's relay publishes it), pulled and acked by the orchestrator.
        await sjs.publish(names.offer_subject("default"), b"offer", stream=names.OFFERS_STREAM)
        sub = await ojs.pull_subscribe_bind(names.offer_durable("default"), stream=EVENTS)
        (offer,) = await sub.fetch(1, timeout=5)
        assert offer.data == b"offer"
        await offer.in_progress()
        await offer.ack_sync()
        # Its claim, answered by the scheduler's group only, to its own inbox.
        reply = await orch.request(names.claim_subject(ORCH), b"claim", timeout=5)
        assert reply.data == b"granted"
        assert reply.subject.startswith(f"_INBOX_orchestrator_{ORCH}.")
        # Reports and logs as itself; its own jobs' last batch, by direct get.
        await ojs.publish(names.report_batch_subject(ORCH), b"report", stream=REPORTS)
        await ojs.publish(names.log_subject(ORCH, "job-1"), b"lines", stream=LOGS)
        last = await ojs.get_last_msg(LOGS, names.log_subject(ORCH, "job-1"), direct=True)
        assert last.data == b"lines"
        with pytest.raises(nats.js.errors.NotFoundError):  # checks a cancel: none yet
            await ojs.get_last_msg(
                EVENTS, names.event_subject("job-1", "cancel_requested"), direct=True
            )
        # Its heartbeat: its own key.
        kv = await ojs.key_value(names.HEARTBEATS_BUCKET)
        await kv.put(names.heartbeat_key(ORCH), b"beat")
        # Stop orders and cancels reach it.
        await scheduler.publish(names.control_subject(ORCH), b"stop")
        await sjs.publish(names.event_subject("job-1", "cancel_requested"), b"cancel")
        got = {(await asyncio.wait_for(received.get(), 5)).data for _ in range(2)}
        assert got == {b"stop", b"cancel"}
        await kv.delete(names.heartbeat_key(ORCH))
        await sub.unsubscribe()
    finally:
        await close(orch)
        await close(scheduler)
    assert "nats.permission_denied" not in caplog.text


async def test_the_log_relay_and_the_janitor_do_their_work_with_their_own_identities(
    secured: SecuredNats, topology: str, caplog: pytest.LogCaptureFixture
) -> None:
    orch = await connect(secured.url, "o", security=_security(secured, "orchestrator", ORCH))
    relay = await connect(secured.url, "relay", security=_security(secured, "log-relay"))
    janitor = await connect(secured.url, "janitor", security=_security(secured, "janitor"))
    try:
        ojs, rjs, jjs = jetstream(orch), jetstream(relay), jetstream(janitor)
        await ojs.publish(names.log_subject(ORCH, "job-2"), b"lines", stream=LOGS)
        await ojs.publish(names.report_batch_subject(ORCH), b"r", stream=REPORTS)
        kv = await ojs.key_value(names.HEARTBEATS_BUCKET)
        await kv.put(names.heartbeat_key(ORCH), b"beat")

        # The relay: its durable, a live tail's ephemeral consumer, the last batch of a job.
        await await_topology(rjs, LOG_RELAY_NEEDS, who="log-relay")
        persist = await rjs.pull_subscribe_bind(names.LOGS_DURABLE, stream=LOGS)
        (batch,) = await persist.fetch(1, timeout=5)
        await batch.ack_sync()
        tail = await rjs.add_consumer(
            LOGS,
            ConsumerConfig(
                name="tail1",
                filter_subject=names.job_logs_filter("job-2"),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
            ),
        )
        inbox = relay.new_inbox()
        lines = await relay.subscribe(inbox)
        await relay.publish(f"$JS.API.CONSUMER.MSG.NEXT.{LOGS}.{tail.name}", b"1", reply=inbox)
        assert (await lines.next_msg(timeout=5)).data == b"lines"
        await rjs.delete_consumer(LOGS, tail.name or "")
        assert (await rjs.get_last_msg(LOGS, names.log_subject(ORCH, "job-2"))).data == b"lines"
        await relay.subscribe(names.job_events_filter("job-2"))
        await relay.flush()

        # The janitor: the installation id, heartbeats, queues' state, waiting reports.
        assert await await_topology(jjs, JANITOR_NEEDS, who="janitor") == topology
        beats = await jjs.key_value(names.HEARTBEATS_BUCKET)
        assert (await beats.get(names.heartbeat_key(ORCH))).value == b"beat"
        await jjs.consumer_info(EVENTS, names.offer_durable("default"))
        waiting = await jjs.get_msg(
            REPORTS, seq=1, subject=names.report_batch_subject(ORCH), next=True
        )
        assert waiting.data == b"r"
        await jjs.publish(names.offer_subject("default"), b"re-offer", stream=names.OFFERS_STREAM)
        await jjs.stream_info(EVENTS)
    finally:
        for nc in (orch, relay, janitor):
            await close(nc)
    assert "nats.permission_denied" not in caplog.text
