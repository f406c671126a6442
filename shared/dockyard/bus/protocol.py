"""Messages between orchestrators and the scheduler, besides events.

Who sent a message is the subject it came on (names.py), which NATS permissions bind to the
sender; a consumer refuses one whose payload names anyone else.

- A claim is a request/reply on `claim_subject(orchestrator)`: granted only once the JobClaimed
  event is appended, so an orchestrator never starts a container on a claim that lost. The
  answer is signed by the scheduler (signing.py) and names the claim it answers.
- Reports (started, exit, ledger entries) go on the REPORTS stream, on the sender's own
  subject, and are turned into events by the scheduler; `report_id` is their Nats-Msg-Id.
- A stop order on an orchestrator's control subject asks it to stop a container it should not
  be running (a stale attempt); the janitor is the backstop if the order is lost.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TypeVar

import msgspec
from msgspec import Struct

from dockyard.bus import names
from dockyard.bus.errors import MessageDecodeError
from dockyard.core.commands import (
    MarkOrchestratorLost,
    PlannedResource,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    ReportUsage,
)
from dockyard.core.events import Metadata
from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec

T = TypeVar("T")

ReportCommand = (
    ReportStarted
    | ReportExit
    | ReportUsage
    | RecordResource
    | ReleaseResource
    | MarkOrchestratorLost
)


class Report(Struct, frozen=True, kw_only=True):
    report_id: str
    job_id: str
    command: ReportCommand
    sent_at: datetime
    meta: Metadata = Metadata()


class ReportBatch(Struct, frozen=True, kw_only=True):
    """Reports of one orchestrator, in the order sent, in one message (one fsync)."""

    reports: list[Report]


class ClaimRequest(Struct, frozen=True, kw_only=True):
    job_id: str
    attempt: int
    orchestrator: str
    # Recorded in the ledger with the claim (the job's container, named per attempt).
    resources: list[PlannedResource] = []
    meta: Metadata = Metadata()


class ClaimAnswer(Struct, frozen=True, kw_only=True):
    """`granted` with the spec to run; otherwise `reason` says why, and `retry` whether the
    offer is worth keeping (the scheduler could not decide now) or should be dropped."""

    granted: bool
    reason: str | None = None
    retry: bool = False
    tenant: str | None = None
    spec: JobSpec | None = None
    # The job's last log seq so far: the greater of what the log relay stored and the last
    # batch on the LOGS stream (any orchestrator's, which only the scheduler may read), so
    # the attempt's seqs never repeat an earlier attempt's.
    log_seq: int = 0
    # The bytes of stdout and stderr its earlier attempts stored: the log cap is per job.
    log_bytes: int = 0
    queued_at: datetime | None = None
    # The names of the request's resources the ledger now holds: the orchestrator sends no
    # intent of its own for these (a scheduler that predates this field answers none).
    recorded: list[str] = []
    meta: Metadata = Metadata()
    # The claim this answers, under the signature: a signed answer cannot be replayed to
    # another job, attempt or orchestrator ("" and 0 from a scheduler that predates them).
    job_id: str = ""
    attempt: int = 0
    orchestrator: str = ""


class LogBatch(Struct, frozen=True, kw_only=True):
    """Lines of one attempt in seq order, under `msg_id_of(nonce, log_batch_id(...))`."""

    job_id: str
    attempt: int
    lines: list[LogLine]
    # Only on the attempt's final batch, sent once its output is over: the seq of its last
    # line (every line up to it was sent before or in this batch; `lines` may be empty). The
    # sender's restarted process reads it to know the attempt's log is whole.
    last_seq: int | None = None

    def seq_reached(self) -> int:
        """The seq of the last line it accounts for (0: none)."""
        return self.lines[-1].seq if self.lines else (self.last_seq or 0)


def log_batch_id(job_id: str, first_seq: int) -> str:
    return f"{job_id}:{first_seq}"


def log_end_id(job_id: str, attempt: int) -> str:
    """The id of an attempt's final batch when it holds no line."""
    return f"{job_id}:end:{attempt}"


def new_nonce() -> str:
    """A sender's secret prefix for its Nats-Msg-Ids (see `msg_id_of`)."""
    return secrets.token_hex(8)


def msg_id_of(nonce: str, fact_id: str) -> str:
    """The Nats-Msg-Id of a message stating `fact_id`, under its sender's nonce.

    JetStream drops a message whose id it has seen within the duplicate window, whatever the
    subject it came on: an id anyone can derive from the job would let another publisher
    send it first and have the real message dropped. Under a nonce only the sender knows,
    its own retries are still dropped as duplicates, and nobody else's message can be.
    """
    return f"{nonce}.{fact_id}"


class StopOrder(Struct, frozen=True, kw_only=True):
    job_id: str
    attempt: int
    reason: str


_encoder = msgspec.json.Encoder()
_report = msgspec.json.Decoder(Report)
_report_batch = msgspec.json.Decoder(ReportBatch)
_claim = msgspec.json.Decoder(ClaimRequest)
_answer = msgspec.json.Decoder(ClaimAnswer)
_stop = msgspec.json.Decoder(StopOrder)
_batch = msgspec.json.Decoder(LogBatch)


def encode(message: Report | ClaimRequest | ClaimAnswer | StopOrder | LogBatch) -> bytes:
    return _encoder.encode(message)


def decode_report(data: bytes) -> Report:
    return _decode(_report, data, "report")


def encode_report_batch(batch: ReportBatch) -> bytes:
    return _encoder.encode(batch)


def decode_reports(subject: str, data: bytes) -> list[Report]:
    """The reports of a REPORTS message: a batch on a batch subject, else one report."""
    if subject.startswith(names.REPORT_BATCH_PREFIX):
        return _decode(_report_batch, data, "report batch").reports
    return [decode_report(data)]


def decode_claim(data: bytes) -> ClaimRequest:
    return _decode(_claim, data, "claim request")


def decode_answer(data: bytes) -> ClaimAnswer:
    return _decode(_answer, data, "claim answer")


def decode_stop(data: bytes) -> StopOrder:
    return _decode(_stop, data, "stop order")


def decode_log_batch(data: bytes) -> LogBatch:
    return _decode(_batch, data, "log batch")


def _decode(decoder: msgspec.json.Decoder[T], data: bytes, what: str) -> T:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"not a {what}: {exc}") from exc


# Heartbeats: orchestrators put them in HEARTBEATS_BUCKET; the janitor reads them.


class RunningJob(Struct, frozen=True, kw_only=True):
    job_id: str
    attempt: int
    log_seq: int


class Heartbeat(Struct, frozen=True, kw_only=True):
    """The value under `names.heartbeat_key(orchestrator)` in HEARTBEATS_BUCKET."""

    orchestrator: str
    queues: list[str]
    max_jobs: int
    lease_s: float
    started_at: datetime
    sent_at: datetime
    jobs: list[RunningJob]
    draining: bool = False
    # Why its Docker engine does not answer (then it claims nothing); None while it does.
    engine_error: str | None = None


_heartbeat = msgspec.json.Decoder(Heartbeat)


def encode_heartbeat(beat: Heartbeat) -> bytes:
    return _encoder.encode(beat)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return _heartbeat.decode(data)
