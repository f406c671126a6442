"""Every NATS stream, subject, durable consumer, bucket, header and container label, named once.

Nobody else spells a subject: they call these.
"""

from __future__ import annotations

import re
from typing import Final

# Job events, published by the outbox relay from PostgreSQL (the source of truth).
EVENTS_STREAM: Final = "DOCKYARD_EVENTS"
EVENTS_SUBJECTS: Final = "dockyard.events.>"

# Work offers: one message per queued attempt, on its queue's subject, consumed by that queue's
# orchestrators. They travel in EVENTS: the outbox relay stores a JobQueued and its offer in
# one atomic batch (one fsync for both), and on a limits-retention stream an ack writes
# nothing, where a work-queue stream wrote and fsynced a tombstone per ack.
OFFERS_STREAM: Final = EVENTS_STREAM
OFFERS_SUBJECTS: Final = "dockyard.offers.*"
# Where earlier versions kept offers (a work-queue stream of its own); `ensure_topology`
# moves what still waits there to OFFERS_SUBJECTS and deletes it.
LEGACY_WORK_STREAM: Final = "DOCKYARD_WORK"

# Who sent a claim, a report or a log batch is the subject it arrived on, never its payload:
# NATS permissions let each orchestrator publish only on subjects bearing its own token
# (`subject_token(id)`), and each consumer checks that the payload names that sender.

# Reports to the scheduler: orchestrators' commands (started, exit, ledger...), each on
# `report_batch_subject(orchestrator)`. (The janitor sends none: it appends its commands to
# the event store itself.)
REPORTS_STREAM: Final = "DOCKYARD_REPORTS"
REPORTS_SUBJECTS: Final = "dockyard.reports.>"
REPORTS_DURABLE: Final = "scheduler-reports"

# Log batches from orchestrators, `log_subject(orchestrator, job)`, persisted by the log relay.
LOGS_STREAM: Final = "DOCKYARD_LOGS"
LOGS_SUBJECTS: Final = "dockyard.logs.*.*"
# The relay's durable reads these and what earlier versions stored as `dockyard.logs.<job>`
# (no sender in it), so batches still waiting at an upgrade are persisted too.
LOGS_FILTER: Final = "dockyard.logs.>"
LOGS_DURABLE: Final = "log-relay"

# Claims are a request/reply so the answer is known before any container starts: an
# orchestrator asks on `claim_subject(itself)`; schedulers answer CLAIMS_SUBJECTS in a group.
CLAIMS_SUBJECTS: Final = "dockyard.claims.*"
CLAIMS_QUEUE_GROUP: Final = "schedulers"

# Orchestrator heartbeats: a key per orchestrator, expiring after the lease.
HEARTBEATS_BUCKET: Final = "dockyard_orchestrators"
# The installation's facts; under DEPLOYMENT_KEY its id (see bus/deployment.py).
META_BUCKET: Final = "dockyard_meta"
DEPLOYMENT_KEY: Final = "deployment"

# Headers.
MSG_ID: Final = "Nats-Msg-Id"
# JetStream's atomic batch publish (server 2.12+, on a stream with allow_atomic).
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"
# On a log batch: the bytes of its stdout and stderr text, what the per-job log cap counts.
LOG_BYTES: Final = "Dockyard-Log-Bytes"
EVENT_TYPE: Final = "Dockyard-Event-Type"
SCHEMA_VERSION: Final = "Dockyard-Schema-Version"
# On a claim answer: the scheduler's ed25519 signature of the payload's exact bytes (base64url)
# and the public nkey it was made with (see bus/signing.py).
CLAIM_SIGNATURE: Final = "Dockyard-Signature"
CLAIM_SIGNER: Final = "Dockyard-Signer"
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

# Labels on every container and network made for a job.
LABEL_JOB: Final = "dockyard.job"
LABEL_ATTEMPT: Final = "dockyard.attempt"
LABEL_ORCHESTRATOR: Final = "dockyard.orchestrator"
LABEL_DEPLOYMENT: Final = "dockyard.deployment"
# On the job container: its timeout, so an orchestrator restarted after it was stopped for it
# still reports `timed_out`.
LABEL_TIMEOUT: Final = "dockyard.timeout_s"


class InvalidSubjectToken(ValueError):
    """Raised when a subject, durable or key would be built from a token NATS cannot carry.

    Specs are validated before anything is stored, so this is a programming error (or a row an
    earlier version let in) caught before the publish, not a message NATS refuses later.
    """


# One subject token: printable ASCII without the separator `.` and the wildcards `*` and `>`.
_TOKEN = re.compile(r"[\x21-\x29\x2b-\x2d\x2f-\x3d\x3f-\x7e]+")  # not * . >


def token(text: str) -> str:
    """`text` itself, if it is one valid subject token; else InvalidSubjectToken."""
    if _TOKEN.fullmatch(text) is None:
        raise InvalidSubjectToken(f"not a subject token: {text!r}")
    return text


def event_subject(job_id: str, event_type: str) -> str:
    return f"dockyard.events.{token(job_id)}.{token(event_type)}"


def job_events_filter(job_id: str) -> str:
    return f"dockyard.events.{token(job_id)}.*"


def events_of_type(event_type: str) -> str:
    return f"dockyard.events.*.{token(event_type)}"


def offer_subject(queue: str) -> str:
    return f"dockyard.offers.{token(queue)}"


def offer_durable(queue: str) -> str:
    return f"offers-{token(queue)}"


def report_subject(job_id: str) -> str:
    """Where earlier versions sent single reports: it names no sender, so what arrives here
    is refused (the janitor still looks here for reports waiting)."""
    return f"dockyard.reports.{token(job_id)}"


def report_batch_subject(orchestrator: str) -> str:
    """An orchestrator's report batches; the janitor looks here for reports still waiting."""
    return f"dockyard.reports.from.{subject_token(orchestrator)}"


REPORT_BATCH_PREFIX: Final = "dockyard.reports.from."


def report_sender(subject: str) -> str | None:
    """The orchestrator token a report subject names; None for any other subject."""
    if subject.startswith(REPORT_BATCH_PREFIX):
        sender = subject[len(REPORT_BATCH_PREFIX) :]
        return sender if _TOKEN.fullmatch(sender) else None
    return None


def claim_subject(orchestrator: str) -> str:
    """Where `orchestrator` asks for claims (and nobody else may)."""
    return f"dockyard.claims.{subject_token(orchestrator)}"


def claim_sender(subject: str) -> str | None:
    """The orchestrator token of a claim subject; None if it is not one."""
    prefix, _, sender = subject.rpartition(".")
    return sender if prefix == "dockyard.claims" and _TOKEN.fullmatch(sender) else None


def log_subject(orchestrator: str, job_id: str) -> str:
    """Where `orchestrator` publishes the log batches of a job it runs."""
    return f"dockyard.logs.{subject_token(orchestrator)}.{token(job_id)}"


def job_logs_filter(job_id: str) -> str:
    """Every batch of a job on the LOGS stream, whichever orchestrator sent it."""
    return f"dockyard.logs.*.{token(job_id)}"


def legacy_log_subject(job_id: str) -> str:
    """Where earlier versions published a job's batches (no sender in it)."""
    return f"dockyard.logs.{token(job_id)}"


def log_sender(subject: str) -> str | None:
    """The orchestrator token of a log subject; None for an earlier version's subject."""
    parts = subject.split(".")
    return parts[2] if len(parts) == 4 else None


def offer_msg_id(job_id: str, attempt: int) -> str:
    """One work offer per attempt: JetStream drops a republished one inside the window."""
    return f"{job_id}:{attempt}"


def control_subject(orchestrator: str) -> str:
    """Orders for one orchestrator (stop a stale container). Core NATS: best effort."""
    return f"dockyard.control.{subject_token(orchestrator)}"


def subject_token(text: str) -> str:
    """One subject token from free text: host names hold dots, which would split it."""
    return "".join(c if _TOKEN.fullmatch(c) else "_" for c in text) or "_"


def heartbeat_key(orchestrator: str) -> str:
    """The orchestrator's key in HEARTBEATS_BUCKET: KV keys allow only `[-/_=.A-Za-z0-9]`.

    Other characters (and `=` itself) become `=<hex>=`, so two ids never share a key.
    """
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-_") else f"={ord(c):x}=" for c in orchestrator
    )
