"""The functional core: job spec, events, the state machine fold and the decisions. No I/O."""

from dockyard.core.codec import decode, encode, register_upcaster
from dockyard.core.commands import (
    ClaimJob,
    Command,
    Context,
    EnqueueDue,
    FailUndeliverable,
    MarkOrchestratorLost,
    PlannedResource,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    ReportUsage,
    RequestCancel,
    SubmitJob,
)
from dockyard.core.decide import decide
from dockyard.core.errors import (
    AlreadyFinished,
    ForeignResource,
    IllegalTransition,
    Rejected,
    StaleAttempt,
    UnknownJob,
)
from dockyard.core.events import EVENT_TYPES, Event, Metadata
from dockyard.core.ids import fire_job_id, uuid7
from dockyard.core.spec import JobSpec, SpecError, decode_spec
from dockyard.core.state import TERMINAL, Job, Status, evolve, fold

__all__ = [
    "EVENT_TYPES",
    "TERMINAL",
    "AlreadyFinished",
    "ClaimJob",
    "Command",
    "Context",
    "EnqueueDue",
    "Event",
    "FailUndeliverable",
    "ForeignResource",
    "IllegalTransition",
    "Job",
    "JobSpec",
    "MarkOrchestratorLost",
    "Metadata",
    "PlannedResource",
    "RecordResource",
    "Rejected",
    "ReleaseResource",
    "ReportExit",
    "ReportStarted",
    "ReportUsage",
    "RequestCancel",
    "SpecError",
    "StaleAttempt",
    "Status",
    "SubmitJob",
    "UnknownJob",
    "decide",
    "decode",
    "decode_spec",
    "encode",
    "evolve",
    "fire_job_id",
    "fold",
    "register_upcaster",
    "uuid7",
]
