"""Tracing: one trace per job, from the API request to its completion, across the services.

A job's trace context travels in its events' `Metadata` (traceparent, tracestate) and in the
`traceparent`/`tracestate` headers of the NATS messages made for it (work offers, log batches,
claims and reports carry `Metadata`), so every service can start its spans as children of it.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then
every helper returns at once, without parsing, formatting or allocating anything per job, and
no traceparent is written anywhere. Spans go to our own provider, never OpenTelemetry's global
one (which can be set only once a process): tests `install` an SDK provider of their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from dockyard.core.events import NO_METADATA, Metadata

log = logging.getLogger("dockyard.telemetry.tracing")

# The services, as they name their spans' `dockyard.service` attribute and their tracers.
SCHEDULER: Final = "scheduler"
ORCHESTRATOR: Final = "orchestrator"
LOG_RELAY: Final = "log-relay"
JANITOR: Final = "janitor"

# Span attributes. `dockyard.service` tells the services apart when they share one process
# (tests); in production each process also says it in its resource's `service.name`.
SERVICE: Final = "dockyard.service"
JOB: Final = "dockyard.job"
ATTEMPT: Final = "dockyard.attempt"
ORCHESTRATOR_ID: Final = "dockyard.orchestrator"

ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# A collector that does not answer must not hold a service's exit for long.
SHUTDOWN_TIMEOUT_S: Final = 5.0

# The W3C names, as the propagator spells them; the NATS headers `bus.names.TRACEPARENT` and
# `TRACESTATE` are the same (not imported: the bus imports this module).
_TRACEPARENT: Final = "traceparent"
_TRACESTATE: Final = "tracestate"
_propagator = TraceContextTextMapPropagator()

Attributes = Mapping[str, AttributeValue]


@dataclass
class _State:
    provider: TracerProvider | None = None  # None: tracing is off
    shutdown: Callable[[], object] | None = None  # of what configure_tracing installed
    tracers: dict[str, Tracer] = field(default_factory=dict)


_state = _State()


def enabled() -> bool:
    return _state.provider is not None


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Export this process's spans by OTLP/HTTP if an endpoint is configured; True if so.

    The resource's `service.name` is `dockyard-<service>`. The exporter reads the standard
    OTEL_EXPORTER_OTLP_* variables (endpoint, headers, timeout, compression) itself.
    """
    env = os.environ if env is None else env
    if not any(env.get(name) for name in ENDPOINT_VARIABLES):
        return False
    # Imported only when used: the exporter pulls in requests and protobuf.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: f"dockyard-{service}"})
    provider = SdkTracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    _state.shutdown = provider.shutdown
    log.info("tracing.enabled service=%s", service, extra={"event": "tracing.enabled"})
    return True


def install(provider: TracerProvider | None) -> None:
    """Send Dockyard's spans to `provider` from now on (None: tracing off). Tests use this."""
    _state.provider = provider
    _state.tracers = {}


async def shutdown_tracing(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush and stop what configure_tracing installed, waiting at most `timeout_s`."""
    shutdown, _state.shutdown = _state.shutdown, None
    if shutdown is None:
        return
    install(None)
    # The SDK's shutdown blocks (it joins its export thread): off the loop, and bounded, in a
    # daemon thread so that a collector that never answers cannot hold the process either.
    worker = threading.Thread(target=shutdown, name="dockyard-tracing-shutdown", daemon=True)
    worker.start()
    await asyncio.to_thread(worker.join, timeout_s)
    if worker.is_alive():
        log.warning("tracing.shutdown_timed_out timeout_s=%g", timeout_s)


def _tracer(service: str) -> Tracer:
    tracer = _state.tracers.get(service)
    if tracer is None:
        assert _state.provider is not None
        tracer = _state.provider.get_tracer(f"dockyard.{service}")
        _state.tracers[service] = tracer
    return tracer


# -- trace context: W3C traceparent/tracestate <-> OpenTelemetry


def job_context(traceparent: str | None, tracestate: str | None = None) -> Context:
    """The context whose span is the job's (remote) span; an empty one (a new trace) if none
    or if `traceparent` is malformed."""
    if traceparent is None:
        return Context()
    carrier = {_TRACEPARENT: traceparent}
    if tracestate:
        carrier[_TRACESTATE] = tracestate
    return _propagator.extract(carrier, context=Context())


def metadata_of(span: Span) -> Metadata:
    """The span's context as event/message metadata (empty for the no-op span)."""
    if not span.get_span_context().is_valid:
        return NO_METADATA
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span, Context()))
    return Metadata(traceparent=carrier.get(_TRACEPARENT), tracestate=carrier.get(_TRACESTATE))


def current_metadata() -> Metadata:
    """The current span's context as metadata: what a report sent inside a span carries."""
    if _state.provider is None:
        return NO_METADATA
    return metadata_of(trace.get_current_span())


def inject_current() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the current span; (None, None) when tracing is off."""
    meta = current_metadata()
    return meta.traceparent, meta.tracestate


def headers_of(meta: Metadata) -> dict[str, str]:
    """NATS (or HTTP) headers carrying `meta`'s trace context; none when it has none."""
    headers: dict[str, str] = {}
    if meta.traceparent is not None:
        headers[_TRACEPARENT] = meta.traceparent
        if meta.tracestate is not None:
            headers[_TRACESTATE] = meta.tracestate
    return headers


def current_headers() -> dict[str, str]:
    """Headers carrying the current span's context (a log batch published inside a span)."""
    return headers_of(current_metadata()) if _state.provider is not None else {}


def message_metadata(headers: Mapping[str, str] | None) -> Metadata:
    """The trace context a received message (or HTTP request) carries in its headers."""
    if _state.provider is None or headers is None:
        return NO_METADATA
    traceparent = headers.get(_TRACEPARENT)
    if traceparent is None:
        return NO_METADATA
    return Metadata(traceparent=traceparent, tracestate=headers.get(_TRACESTATE))


# -- spans


@contextmanager
def start_trace(
    service: str,
    name: str,
    *,
    parent: Metadata = NO_METADATA,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A job's first span, made current for the block: a new trace, or a child of `parent`
    (e.g. an HTTP caller's traceparent). A no-op span when tracing is off."""
    if _state.provider is None:
        yield INVALID_SPAN
        return
    context = job_context(parent.traceparent, parent.tracestate)
    with _start(service, name, context, attributes) as span:
        yield span


@contextmanager
def job_span(
    service: str,
    name: str,
    *,
    parent: Metadata | None = None,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span in a job's trace, made current for the block: a child of `parent`'s trace
    context, or (`parent` None) of the current span. It never starts a trace: without a
    parent (a job submitted while tracing was off) or with tracing off, it is a no-op span.
    An exception leaving the block is recorded and sets the span's status."""
    if _state.provider is None:
        yield INVALID_SPAN
        return
    if parent is None:
        if not trace.get_current_span().is_recording():
            yield INVALID_SPAN
            return
        context = None
    elif parent.traceparent is None:
        yield INVALID_SPAN
        return
    else:
        context = job_context(parent.traceparent, parent.tracestate)
    with _start(service, name, context, attributes) as span:
        yield span


@contextmanager
def _start(
    service: str, name: str, context: Context | None, attributes: Attributes | None
) -> Iterator[Span]:
    with _tracer(service).start_as_current_span(
        name, context=context, attributes={SERVICE: service, **(attributes or {})}
    ) as span:
        yield span


def record_span(
    service: str,
    name: str,
    *,
    parent: Metadata,
    start: datetime | int,
    attributes: Attributes | None = None,
) -> Metadata:
    """A span that began at `start` (a time, or ns since the epoch) and ends now, as a child of
    `parent`'s trace; returns its context (`parent` itself when tracing is off or `parent` has
    no trace: like job_span, it never starts one)."""
    if _state.provider is None or parent.traceparent is None:
        return parent
    start_ns = start if isinstance(start, int) else int(start.timestamp() * 1e9)
    start_ns = min(start_ns, time.time_ns())  # another host's clock may be ahead of ours
    span = _tracer(service).start_span(
        name,
        context=job_context(parent.traceparent, parent.tracestate),
        attributes={SERVICE: service, **(attributes or {})},
        start_time=start_ns,
    )
    span.end()
    return metadata_of(span)
