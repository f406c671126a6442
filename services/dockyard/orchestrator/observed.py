"""The claim, observed: its span in the job's trace, and its latency.

The claim span is a child of the trace context the work offer carried (the request's `meta`),
and the request carries the span's own context on to the scheduler, which appends JobClaimed
in it and echoes it in the answer; the attempt's spans continue from there (`Claim.meta`).
"""

from __future__ import annotations

import time

from msgspec.structs import replace

from dockyard.bus import protocol
from dockyard.orchestrator.claimer import Ask
from dockyard.orchestrator.metrics import OrchestratorMetrics
from dockyard.telemetry import tracing


def observed_ask(ask: Ask, metrics: OrchestratorMetrics) -> Ask:
    async def observed(request: protocol.ClaimRequest) -> protocol.ClaimAnswer | None:
        began = time.perf_counter()
        answer: protocol.ClaimAnswer | None = None
        try:
            with tracing.job_span(
                tracing.ORCHESTRATOR,
                "dockyard.claim",
                parent=request.meta,
                attributes={
                    tracing.JOB: request.job_id,
                    tracing.ATTEMPT: request.attempt,
                    tracing.ORCHESTRATOR_ID: request.orchestrator,
                },
            ) as span:
                if span.is_recording():
                    request = replace(request, meta=tracing.metadata_of(span))
                answer = await ask(request)
                span.set_attribute("dockyard.claim.answer", answer_name(answer))
            return answer
        finally:
            elapsed = time.perf_counter() - began
            metrics.claim_seconds.labels(answer_name(answer)).observe(elapsed)

    return observed


def answer_name(answer: protocol.ClaimAnswer | None) -> str:
    if answer is None:
        return "unanswered"
    return "granted" if answer.granted else "refused"
