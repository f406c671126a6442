"""Whether a stored event is one the current validation would have let in.

Rows an earlier version accepted (a queue name ending in a newline, say) must not reach NATS,
where their subject or size would be refused: the outbox relay sets such events aside at
start, and a schedule holding such a spec is not fired.
"""

from __future__ import annotations

import msgspec

from dockyard.core.events import Event, JobQueued, JobSubmitted
from dockyard.core.spec import JobSpec, QueueName, SpecError, convert_spec


def why_undeliverable(event: Event) -> str | None:
    """What no current validation accepts in `event`, in words; None if it is fine."""
    if isinstance(event, JobSubmitted):
        return spec_problem(event.spec)
    if isinstance(event, JobQueued):
        try:
            msgspec.convert(event.queue, QueueName)
        except msgspec.ValidationError:
            return f"its queue name {event.queue!r} is not valid"
    return None


def spec_problem(spec: JobSpec) -> str | None:
    """What no current validation accepts in a stored `spec` (an event's, a schedule's)."""
    try:
        convert_spec(msgspec.to_builtins(spec))
    except SpecError as exc:
        return f"its spec is not valid: {exc.field}: {exc.message}"
    return None
