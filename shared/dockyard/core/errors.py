"""What the core refuses, and why: each error names the job, the transition and the reason."""

from __future__ import annotations


class Rejected(Exception):
    """Raised when an event or command cannot apply to a job in its current state."""

    code = "rejected"

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.message = message


class IllegalTransition(Rejected):
    """Raised when an event would move a job along an edge the status graph does not have."""

    code = "illegal_transition"

    def __init__(self, job_id: str, status: str | None, event_type: str, why: str) -> None:
        super().__init__(job_id, f"job {job_id}: {event_type} is illegal from {status}: {why}")
        self.status = status
        self.event_type = event_type
        self.why = why


class StaleAttempt(Rejected):
    """Raised when a report or event carries an attempt that is no longer the current one."""

    code = "stale_attempt"

    def __init__(self, job_id: str, attempt: int, current: int) -> None:
        super().__init__(
            job_id, f"job {job_id}: attempt {attempt} is stale, the current attempt is {current}"
        )
        self.attempt = attempt
        self.current = current


class AlreadyFinished(Rejected):
    """Raised when a command needs a live job but the job has reached a final status."""

    code = "already_finished"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(job_id, f"job {job_id} is already {status}")
        self.status = status


class UnknownJob(Rejected):
    """Raised when a command names a job that has no history."""

    code = "unknown_job"

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} does not exist")


class ForeignResource(Rejected):
    """Raised when a claim or report names a resource the attempt cannot have made: the ledger
    holds only the names Dockyard gives an attempt (`dockyard.core.resource_names`), since the
    janitor removes what the ledger holds."""

    code = "foreign_resource"

    def __init__(self, job_id: str, attempt: int, kind: str, name: str) -> None:
        shown = name if len(name) <= 100 else f"{name[:100]}..."
        super().__init__(
            job_id,
            f"job {job_id}: {kind} {shown!r} is not a name Dockyard gives attempt {attempt} "
            "of this job: refused, nothing recorded",
        )
        self.attempt = attempt
        self.kind = kind
        self.name = name


class NotTheHolder(Rejected):
    """Raised when a report about an attempt comes from an orchestrator that did not claim it."""

    code = "not_the_holder"

    def __init__(self, job_id: str, attempt: int, sender: str, holder: str | None) -> None:
        super().__init__(
            job_id,
            f"job {job_id}: attempt {attempt} is held by {holder or 'no orchestrator'}, "
            f"not by {sender}, which reported it",
        )
        self.attempt = attempt
        self.sender = sender
        self.holder = holder
