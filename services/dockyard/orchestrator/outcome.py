"""How an attempt ended, as the ReportExit the scheduler records: pure, so every path is tested.

OOM: on cgroup v1 the engine's OOMKilled flag is also set when the kernel killed some process
of the container other than its main one, and the job may well have coped and exited 0. So an
attempt is `oom_killed` only if the flag is set *and* it exited non-zero; exit 0 is success.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct
from msgspec.structs import replace

from dockyard.core.commands import ReportExit
from dockyard.core.reasons import Reason
from dockyard.core.usage import Limits, Usage, limit_words
from dockyard.runtime.ports import ContainerRuntimeError, ExitStatus

StopKind = Literal["timeout", "cancel", "stop_order", "shutdown"]


class StopRequest(Struct, frozen=True):
    """Why Dockyard stopped an attempt that had not ended by itself; `detail` is for a person."""

    kind: StopKind
    detail: str


class Ran(Struct, frozen=True, kw_only=True):
    """What is known about a container that ran."""

    status: ExitStatus
    duration_s: float
    started_at: datetime


def stopped_note(stop: StopRequest, grace_s: float) -> str:
    """The `system` log line written when Dockyard starts stopping the container."""
    return f"{stop.detail}: stopping the container (SIGTERM, SIGKILL after {grace_s:g} s)"


def exit_report(attempt: int, ran: Ran, stop: StopRequest | None, *, memory_mb: int) -> ReportExit:
    """The report for a container that was started and has exited."""
    code = ran.status.exit_code

    def report(reason: Reason | None = None, error: str | None = None) -> ReportExit:
        return ReportExit(
            attempt=attempt,
            exit_code=code,
            reason=reason,
            error=error,
            duration_s=ran.duration_s,
            started_at=ran.started_at,
        )

    if stop is not None:
        if stop.kind == "timeout":
            return report("timed_out", f"{stop.detail}; it exited with code {code}")
        if stop.kind == "cancel":
            return report("cancelled", stop.detail)
        return report("orchestrator_lost", stop.detail)
    if ran.status.error:
        return report("container_error", ran.status.error)
    if ran.status.oom_killed and code != 0:
        return report(
            "oom_killed", f"out of memory: killed at the {memory_mb} MiB limit (exit code {code})"
        )
    if code == 0:
        return report()
    return report("exit_code", f"the command exited with code {code}")


def with_usage(
    report: ReportExit,
    limits: Limits,
    *,
    usage: Usage | None,
    hits: tuple[str, ...] = (),
    disk_mb: dict[str, int] | None = None,
) -> ReportExit:
    """The report with the attempt's final usage, and a failed one's error naming the limits
    it reached (an OOM kill's error says so already)."""
    if usage is None and not hits:
        return report
    error = report.error
    if error is not None and outcome_of(report) != "succeeded":
        named = [h for h in hits if not (h == "memory" and report.reason == "oom_killed")]
        words = limit_words(named, limits, disk_mb)
        if words:
            error = f"{error}; {words}"
    return replace(report, usage=usage, limits_hit=hits, error=error)


def not_started_report(attempt: int, stop: StopRequest) -> ReportExit:
    """Stopped before its container started (cancelled while pulling, drained, ...)."""
    reason: Reason = "cancelled" if stop.kind == "cancel" else "orchestrator_lost"
    return ReportExit(
        attempt=attempt,
        exit_code=None,
        reason=reason,
        error=f"{stop.detail} (before the container started)",
    )


def failed_report(attempt: int, error: BaseException, ran: Ran | None = None) -> ReportExit:
    """The attempt could not be run: the runtime's error names the reason, anything else is
    a `container_error` with the message, so a person can see what went wrong."""
    if isinstance(error, ContainerRuntimeError):
        reason: Reason = error.reason or "container_error"
        message = error.message
    else:
        reason = "container_error"
        message = f"{type(error).__name__}: {error}"
    return ReportExit(
        attempt=attempt,
        exit_code=ran.status.exit_code if ran else None,
        reason=reason,
        error=message,
        duration_s=ran.duration_s if ran else 0.0,
        started_at=ran.started_at if ran else None,
    )


def recovered_report(
    attempt: int,
    orchestrator: str,
    *,
    exit_code: int | None,
    oom_killed: bool,
    was_running: bool,
    ran_s: float | None = None,
    timeout_s: float | None = None,
    log_whole: bool = True,
) -> ReportExit:
    """An attempt found after this orchestrator restarted (see `recovery`).

    A container that had exited reports its real exit (so a job that did its work is not run
    again) if its log is whole (`log_whole`: its final batch was published); else its last
    lines died with the previous process, and it is `orchestrator_lost`. One still running
    was stopped, and one never started was not run: both are `orchestrator_lost` too, which
    the job's retry policy may retry. One that ran to its timeout (`ran_s` from its start,
    `timeout_s` from its label) timed out, stopped by the previous process or by this one.
    """
    lost = f"orchestrator {orchestrator} restarted while running attempt {attempt}"
    if timeout_s is not None and ran_s is not None and ran_s >= timeout_s:
        error = f"timed out after {timeout_s:g} s (found after {lost})"
        if exit_code is not None:
            error = f"{error}; it exited with code {exit_code}"
        return ReportExit(
            attempt=attempt, exit_code=exit_code, reason="timed_out", error=error, duration_s=ran_s
        )
    if was_running:
        error = f"{lost}: its container was stopped, as output cannot be followed across a restart"
        return ReportExit(
            attempt=attempt, exit_code=exit_code, reason="orchestrator_lost", error=error
        )
    if exit_code is None:
        error = f"{lost}, before its container started"
        return ReportExit(attempt=attempt, exit_code=None, reason="orchestrator_lost", error=error)
    if not log_whole:
        error = (
            f"{lost}: the job had exited with code {exit_code}, but its last output lines were"
            " lost with the orchestrator, so this attempt does not count"
        )
        return ReportExit(
            attempt=attempt, exit_code=exit_code, reason="orchestrator_lost", error=error
        )
    if oom_killed and exit_code != 0:
        error = f"out of memory: killed at the memory limit (exit code {exit_code})"
        return ReportExit(attempt=attempt, exit_code=exit_code, reason="oom_killed", error=error)
    if exit_code == 0:
        return ReportExit(attempt=attempt, exit_code=0)
    error = f"the command exited with code {exit_code} (found after {lost})"
    return ReportExit(attempt=attempt, exit_code=exit_code, reason="exit_code", error=error)


def outcome_of(report: ReportExit) -> str:
    """`succeeded`, or the reason the attempt failed (`exit_code`, `timed_out`...)."""
    if report.reason is None and report.exit_code == 0:
        return "succeeded"
    return report.reason or "exit_code"
