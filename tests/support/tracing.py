"""Recording spans in tests: an SDK provider with an in-memory exporter, installed in Dockyard's
own tracing holder (never OpenTelemetry's global provider, which a process can set only once)
and removed afterwards, so tests before and after run with tracing off."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dockyard.telemetry import tracing


@contextmanager
def recording_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name}: {[s.name for s in spans]}"
    return found[0]


def service_of(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get(tracing.SERVICE))


def trace_id_of(traceparent: str | None) -> int | None:
    """The trace id a W3C traceparent names (`00-<trace>-<span>-<flags>`)."""
    if traceparent is None:
        return None
    return int(traceparent.split("-")[1], 16)
