"""Bus messages, headers, error translation and the declared topology, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import nats.errors
import nats.js.errors
import pytest

from dockyard.bus import (
    BusRejected,
    BusUnavailable,
    MessageDecodeError,
    WorkOffer,
    decode_event,
    decode_work_offer,
    encode_work_offer,
    message_id,
    names,
    protocol,
)
from dockyard.bus.connection import RECONNECT_CAP_S, reconnect_delay, redact, server_urls
from dockyard.bus.errors import MessageRejected, translate
from dockyard.bus.messages import event_headers, work_offer_for, work_offer_headers
from dockyard.bus.topology import (
    DUPLICATE_WINDOW_S,
    consumer_configs,
    heartbeat_bucket_config,
    stream_configs,
)
from dockyard.core import codec
from dockyard.core.events import JobClaimed, JobQueued, Metadata
from dockyard.core.log_line import LogLine

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUEUED = JobQueued(
    event_id="e-1",
    job_id="j-1",
    at=T0,
    attempt=2,
    queue="gpu",
    meta=Metadata(traceparent="00-abc-def-01", tracestate="k=v"),
)


def test_event_headers_carry_id_type_schema_and_trace() -> None:
    assert event_headers(QUEUED) == {
        names.MSG_ID: "e-1",
        names.EVENT_TYPE: "job_queued",
        names.SCHEMA_VERSION: "1",
        names.TRACEPARENT: "00-abc-def-01",
        names.TRACESTATE: "k=v",
    }
    claimed = JobClaimed(event_id="e-2", job_id="j-1", at=T0, attempt=2, orchestrator="o")
    assert names.TRACEPARENT not in event_headers(claimed)


def test_work_offer_round_trips_and_is_deduplicated_per_attempt() -> None:
    offer = work_offer_for(QUEUED)
    assert offer == WorkOffer(job_id="j-1", attempt=2, queue="gpu", event_id="e-1")
    assert decode_work_offer(encode_work_offer(offer)) == offer
    assert work_offer_headers(offer, QUEUED)[names.MSG_ID] == names.offer_msg_id("j-1", 2)


def test_decoding_is_tolerant_of_new_fields_and_rejects_garbage() -> None:
    newer = b'{"job_id":"j","attempt":1,"queue":"q","event_id":"e","added_later":true}'
    assert decode_work_offer(newer).job_id == "j"
    with pytest.raises(MessageDecodeError):
        decode_work_offer(b'{"job_id":"j"}')
    assert decode_event(codec.encode(QUEUED)) == QUEUED
    for garbage in (b"not json", b'{"type":"no_such_event"}', b"{}"):
        with pytest.raises(MessageDecodeError):
            decode_event(garbage)
    with pytest.raises(MessageDecodeError):
        message_id(None)
    assert message_id({names.MSG_ID: "x"}) == "x"


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (nats.errors.TimeoutError(), BusUnavailable),
        (nats.errors.ConnectionClosedError(), BusUnavailable),
        (nats.js.errors.NoStreamResponseError(), BusUnavailable),
        (ConnectionRefusedError(), BusUnavailable),
        (nats.js.errors.ServiceUnavailableError(code=503, description="x"), BusUnavailable),
        (nats.js.errors.BadRequestError(code=400, err_code=10060, description="x"), BusRejected),
        (nats.errors.MaxPayloadError(), MessageRejected),
        (nats.errors.BadSubjectError(), MessageRejected),
        (names.InvalidSubjectToken("x"), MessageRejected),
        (
            nats.js.errors.BadRequestError(code=400, err_code=10054, description="x"),
            MessageRejected,
        ),
    ],
)
def test_nats_errors_translate_to_retry_or_refusal(
    raised: BaseException, expected: type[Exception]
) -> None:
    assert type(translate(raised)) is expected


def test_streams_and_consumers_are_declared_as_the_design_says() -> None:
    streams = {s.name: s for s in stream_configs(replicas=3)}
    assert set(streams) == {names.EVENTS_STREAM, names.REPORTS_STREAM, names.LOGS_STREAM}
    assert names.OFFERS_STREAM == names.EVENTS_STREAM  # offers ride in their events' batches
    assert all(s.num_replicas == 3 and s.storage == "file" for s in streams.values())
    assert streams[names.EVENTS_STREAM].duplicate_window == DUPLICATE_WINDOW_S
    assert streams[names.LOGS_STREAM].max_age

    durables = {c.durable_name: (stream, c) for stream, c in consumer_configs(["a", "b", "a"])}
    assert set(durables) == {
        names.REPORTS_DURABLE,
        names.LOGS_DURABLE,
        names.offer_durable("a"),
        names.offer_durable("b"),
    }
    for _stream, config in durables.values():
        assert config.ack_policy == "explicit"
        assert config.backoff and config.ack_wait == config.backoff[0]
        assert config.max_deliver is not None and config.max_deliver > len(config.backoff)
    assert durables[names.offer_durable("b")][1].filter_subject == names.offer_subject("b")
    assert heartbeat_bucket_config(lease_s=9.0).ttl == 9.0


def test_reconnect_backoff_is_bounded_and_urls_are_redacted() -> None:
    delays = [reconnect_delay(n) for n in range(40)]
    assert delays[0] < 0.2
    assert max(delays) <= RECONNECT_CAP_S * 1.2
    assert redact("nats://user:secret@host:4222") == "nats://***@host:4222"
    assert redact("nats://host:4222") == "nats://host:4222"


def test_a_nats_url_may_name_a_clusters_nodes() -> None:
    assert server_urls("nats://a:4222") == ["nats://a:4222"]
    assert server_urls(" nats://a:4222, nats://b:4222 ,") == ["nats://a:4222", "nats://b:4222"]
    assert redact("nats://u:p@a:4222,nats://b:4222") == "nats://***@a:4222,nats://b:4222"
    with pytest.raises(ValueError, match="no NATS server"):
        server_urls(" , ")


def test_a_final_batch_without_lines_still_says_how_far_the_log_reached() -> None:
    """What a next attempt's claim numbers its lines after, and a restart continues after."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    line = LogLine(seq=4, stream="stdout", text="x", at=at, attempt=1)
    assert protocol.LogBatch(job_id="j", attempt=1, lines=[line]).seq_reached() == 4
    assert protocol.LogBatch(job_id="j", attempt=1, lines=[], last_seq=4).seq_reached() == 4
    assert protocol.LogBatch(job_id="j", attempt=1, lines=[]).seq_reached() == 0
