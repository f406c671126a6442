"""Tracing: off (nothing recorded, no traceparent anywhere) unless configured; on, every span
of a job continues its trace, and the core stamps the job's trace on the events it decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from dockyard.bus import names
from dockyard.bus.messages import work_offer_for, work_offer_headers
from dockyard.core import ClaimJob, Context, Metadata, ReportExit, SubmitJob, decide
from dockyard.core.events import NO_METADATA, JobQueued
from dockyard.telemetry import tracing
from tests.support.tracing import one, recording_spans, service_of, trace_id_of
from tests.unit.builders import JOB, T0, Ids, Scenario, spec

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def queued(meta: Metadata = NO_METADATA) -> JobQueued:
    return JobQueued(event_id="e2", job_id=JOB, at=T0, attempt=1, queue="default", meta=meta)


def test_the_headers_are_the_w3c_ones() -> None:
    meta = Metadata(traceparent=PARENT, tracestate="k=v")
    assert tracing.headers_of(meta) == {names.TRACEPARENT: PARENT, names.TRACESTATE: "k=v"}


# -- off: the default


def test_off_without_an_endpoint_and_nothing_is_recorded() -> None:
    assert tracing.configure_tracing(tracing.SCHEDULER, env={}) is False
    assert not tracing.enabled()
    with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit") as span:
        assert not span.is_recording()
        assert tracing.metadata_of(span) is NO_METADATA
        with tracing.job_span(tracing.ORCHESTRATOR, "dockyard.attempt") as child:
            assert not child.is_recording()
        assert tracing.current_metadata() is NO_METADATA
        assert tracing.inject_current() == (None, None)
        assert tracing.current_headers() == {}
    assert tracing.message_metadata({names.TRACEPARENT: PARENT}) is NO_METADATA
    parent = Metadata(traceparent=PARENT)
    assert tracing.record_span(tracing.SCHEDULER, "x", parent=parent, start=T0) is parent


def test_off_the_events_of_a_job_carry_no_traceparent() -> None:
    with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit") as span:
        ctx = Context(job_id=JOB, now=T0, meta=tracing.metadata_of(span))
        events = decide(None, SubmitJob(tenant="acme", spec=spec()), ctx, Ids())
    assert [event.meta.traceparent for event in events] == [None, None]
    headers = work_offer_headers(work_offer_for(queued()), queued())
    assert names.TRACEPARENT not in headers


def test_off_a_traceparent_already_on_an_event_is_passed_on_unchanged() -> None:
    event = queued(Metadata(traceparent=PARENT, tracestate="k=v"))
    headers = work_offer_headers(work_offer_for(event), event)
    assert (headers[names.TRACEPARENT], headers[names.TRACESTATE]) == (PARENT, "k=v")


async def test_configured_by_the_endpoint_with_the_service_name() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # never reached: no span ends
    assert tracing.configure_tracing(tracing.LOG_RELAY, env=env) is True
    try:
        assert tracing.enabled()
        provider = tracing._state.provider
        assert isinstance(provider, SdkTracerProvider)
        assert provider.resource.attributes["service.name"] == "dockyard-log-relay"
    finally:
        await tracing.shutdown_tracing()
    assert not tracing.enabled()


# -- on


def test_a_job_trace_starts_at_submit_and_every_span_continues_it() -> None:
    with recording_spans() as exporter:
        with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit") as submit:
            meta = tracing.metadata_of(submit)
        assert meta.traceparent is not None
        with (
            tracing.job_span(tracing.ORCHESTRATOR, "dockyard.attempt", parent=meta),
            tracing.job_span(tracing.ORCHESTRATOR, "dockyard.container.run"),
        ):
            assert tracing.current_headers()[names.TRACEPARENT] != meta.traceparent
        persisted = tracing.record_span(
            tracing.LOG_RELAY, "dockyard.logs.persist", parent=meta, start=T0
        )
        spans = exporter.get_finished_spans()
    submit_span = one(spans, "dockyard.submit")
    attempt = one(spans, "dockyard.attempt")
    run = one(spans, "dockyard.container.run")
    persist = one(spans, "dockyard.logs.persist")
    trace_id = submit_span.context.trace_id
    assert {span.context.trace_id for span in spans} == {trace_id}
    assert trace_id_of(meta.traceparent) == trace_id == trace_id_of(persisted.traceparent)
    assert attempt.parent is not None and attempt.parent.span_id == submit_span.context.span_id
    assert run.parent is not None and run.parent.span_id == attempt.context.span_id
    assert persist.start_time is not None and persist.end_time is not None
    assert persist.start_time <= persist.end_time  # a start in the future is clamped to now
    assert {span.name: service_of(span) for span in spans} == {
        "dockyard.submit": "scheduler",
        "dockyard.attempt": "orchestrator",
        "dockyard.container.run": "orchestrator",
        "dockyard.logs.persist": "log-relay",
    }


def test_job_span_never_starts_a_trace() -> None:
    with recording_spans() as exporter:
        with tracing.job_span(tracing.ORCHESTRATOR, "no parent", parent=NO_METADATA) as span:
            assert not span.is_recording()
        with tracing.job_span(tracing.ORCHESTRATOR, "no current span") as span:
            assert not span.is_recording()
        assert tracing.record_span(tracing.LOG_RELAY, "x", parent=NO_METADATA, start=T0) == (
            NO_METADATA
        )
        assert exporter.get_finished_spans() == ()


def test_submit_continues_a_callers_trace_and_ignores_a_malformed_one() -> None:
    with recording_spans():
        caller = tracing.message_metadata({"traceparent": PARENT, "tracestate": "k=v"})
        with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit", parent=caller) as span:
            meta = tracing.metadata_of(span)
        assert trace_id_of(meta.traceparent) == trace_id_of(PARENT)
        assert meta.tracestate == "k=v"
        bad = Metadata(traceparent="00-not-a-trace-01")
        with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit", parent=bad) as span:
            assert span.is_recording()
            assert span.get_span_context().trace_id != trace_id_of(PARENT)


def test_an_exception_in_a_span_is_recorded() -> None:
    with recording_spans() as exporter:
        with (
            pytest.raises(RuntimeError),
            tracing.start_trace(tracing.SCHEDULER, "dockyard.submit"),
        ):
            raise RuntimeError("boom")
        (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR


def test_the_dispatch_span_runs_from_the_queued_commit_to_the_offer() -> None:
    with recording_spans() as exporter:
        with tracing.start_trace(tracing.SCHEDULER, "dockyard.submit") as span:
            meta = tracing.metadata_of(span)
        committed = datetime.now(UTC) - timedelta(seconds=1)
        event = JobQueued(
            event_id="e2", job_id=JOB, at=committed, attempt=1, queue="default", meta=meta
        )
        headers = work_offer_headers(work_offer_for(event), event)
        dispatch = one(exporter.get_finished_spans(), "dockyard.dispatch")
    assert dispatch.parent is not None
    assert dispatch.parent.span_id == span.get_span_context().span_id
    assert dispatch.start_time == int(committed.timestamp() * 1e9)
    # The offer carries the dispatch's context: the claim is its child.
    assert headers[names.TRACEPARENT].startswith(
        f"00-{dispatch.context.trace_id:032x}-{dispatch.context.span_id:016x}-"
    )


# -- the core keeps a job's events in its trace


def test_events_decided_later_carry_the_jobs_trace_unless_the_command_brings_its_own() -> None:
    job_trace = Metadata(traceparent=PARENT, tracestate="k=v")
    s = Scenario()
    s.events.extend(
        decide(
            None,
            SubmitJob(tenant="acme", spec=spec()),
            Context(job_id=JOB, now=T0, meta=job_trace),
            s.ids,
        )
    )
    assert s.job is not None and (s.job.traceparent, s.job.tracestate) == (PARENT, "k=v")
    (claimed,) = s.when(ClaimJob(attempt=1, orchestrator="o1"))  # a command without a trace
    assert claimed.meta == job_trace
    own = Metadata(traceparent="00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01")
    ctx = Context(job_id=JOB, now=T0, meta=own)
    (ended,) = decide(s.job, ReportExit(attempt=1, exit_code=0), ctx, s.ids)
    assert ended.meta == own
