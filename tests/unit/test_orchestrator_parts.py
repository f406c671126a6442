"""The orchestrator's small pure parts: outcomes, report ids, the registry, config, heartbeats."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from dockyard.bus import names
from dockyard.bus.protocol import Heartbeat, RunningJob, decode_heartbeat, encode_heartbeat
from dockyard.config import ConfigError, load
from dockyard.core.commands import (
    MarkOrchestratorLost,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
)
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.outcome import (
    Ran,
    StopRequest,
    exit_report,
    failed_report,
    not_started_report,
    recovered_report,
)
from dockyard.orchestrator.registry import Registry
from dockyard.orchestrator.reporter import report_id
from dockyard.runtime.ports import ExitStatus, ImagePullFailed, RuntimeUnavailable

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ran(code: int, *, oom: bool = False, error: str | None = None) -> Ran:
    return Ran(status=ExitStatus(code, oom, error), duration_s=2.5, started_at=T0)


OOM = "out of memory: killed at the 64 MiB limit (exit code {})"
TIMEOUT = StopRequest("timeout", "timed out after 5 s")
TIMED_OUT = "timed out after 5 s; it exited with code {}"
SHUTDOWN = StopRequest("shutdown", "orchestrator o shut down")


@pytest.mark.parametrize(
    ("outcome", "stop", "reason", "error"),
    [
        (ran(0), None, None, None),
        (ran(2), None, "exit_code", "the command exited with code 2"),
        # cgroup v1 flags OOM when any process was killed; a job that coped and exited 0
        # succeeded.
        (ran(0, oom=True), None, None, None),
        (ran(137, oom=True), None, "oom_killed", OOM.format(137)),
        (ran(1, oom=True), None, "oom_killed", OOM.format(1)),
        (ran(137, error="engine lost it"), None, "container_error", "engine lost it"),
        (ran(143), TIMEOUT, "timed_out", TIMED_OUT.format(143)),
        (ran(0), TIMEOUT, "timed_out", TIMED_OUT.format(0)),
        (ran(143), StopRequest("cancel", "cancelled by ann"), "cancelled", "cancelled by ann"),
        (ran(143), SHUTDOWN, "orchestrator_lost", "orchestrator o shut down"),
        (ran(143), StopRequest("stop_order", "stale"), "orchestrator_lost", "stale"),
    ],
)
def test_exit_report(outcome: Ran, stop: StopRequest | None, reason: str, error: str) -> None:
    report = exit_report(3, outcome, stop, memory_mb=64)
    assert (report.reason, report.error) == (reason, error)
    assert (report.attempt, report.exit_code, report.duration_s, report.started_at) == (
        3,
        outcome.status.exit_code,
        2.5,
        T0,
    )


def test_reports_without_a_run() -> None:
    assert not_started_report(1, StopRequest("cancel", "cancelled by ann")) == ReportExit(
        attempt=1,
        exit_code=None,
        reason="cancelled",
        error="cancelled by ann (before the container started)",
    )
    assert not_started_report(1, StopRequest("shutdown", "drained")).reason == "orchestrator_lost"
    pulled = failed_report(2, ImagePullFailed("pull image x: denied"))
    assert (pulled.reason, pulled.error) == ("image_pull_failed", "pull image x: denied")
    engine = failed_report(2, RuntimeUnavailable("Docker did not answer"))
    assert (engine.reason, engine.error) == ("container_error", "Docker did not answer")
    bug = failed_report(2, KeyError("x"))
    assert (bug.reason, bug.error) == ("container_error", "KeyError: 'x'")


def test_recovered_reports() -> None:
    running = recovered_report(1, "o", exit_code=143, oom_killed=False, was_running=True)
    assert (running.reason, running.exit_code) == ("orchestrator_lost", 143)
    assert running.error is not None and running.error.startswith(
        "orchestrator o restarted while running attempt 1: its container was stopped"
    )
    done = recovered_report(1, "o", exit_code=0, oom_killed=False, was_running=False)
    assert (done.reason, done.exit_code) == (None, 0)  # its work is done: not redone
    failed = recovered_report(1, "o", exit_code=4, oom_killed=False, was_running=False)
    assert (failed.reason, failed.exit_code) == ("exit_code", 4)
    never = recovered_report(1, "o", exit_code=None, oom_killed=False, was_running=False)
    assert (never.reason, never.exit_code) == ("orchestrator_lost", None)


def test_report_ids_name_the_fact_so_a_repeat_is_a_duplicate() -> None:
    ids = [
        report_id("j", ReportStarted(attempt=2, container_id="c", orchestrator="o")),
        report_id("j", ReportExit(attempt=2, exit_code=0)),
        report_id("j", RecordResource(attempt=2, kind="sidecar", name="n", orchestrator="o")),
        report_id("j", ReleaseResource(attempt=2, kind="sidecar", name="n")),
        report_id("j", MarkOrchestratorLost(attempt=2, orchestrator="o", silent_s=1)),
    ]
    assert ids == [
        "j:2:started",
        "j:2:exit",
        "j:2:intend:sidecar:n",
        "j:2:release:sidecar:n",
        "j:2:lost:o",
    ]
    # Another exit for the same attempt (after a restart) is the same fact: the same id.
    assert report_id("j", ReportExit(attempt=2, exit_code=1, reason="exit_code")) == "j:2:exit"


class _Running:
    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.ticket = None  # type: ignore[assignment]
        self.log_seq = 0
        self.stops: list[StopRequest] = []

    def request_stop(self, stop: StopRequest) -> None:
        self.stops.append(stop)


def test_registry_fences_running_and_finished_attempts() -> None:
    registry = Registry(remembered=2)
    first = _Running("a", 1)
    registry.add(first)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        registry.add(_Running("a", 1))  # type: ignore[arg-type]
    assert registry.get("a") is first and not registry.is_done("a", 1)
    registry.stop_all(StopRequest("shutdown", "bye"))
    assert first.stops == [StopRequest("shutdown", "bye")]
    registry.finish(first)  # type: ignore[arg-type]
    assert registry.get("a") is None and registry.is_done("a", 1) and len(registry) == 0
    registry.mark_done("b", 1)
    registry.mark_done("c", 1)
    assert not registry.is_done("a", 1)  # bounded: the oldest is forgotten
    assert registry.is_done("b", 1) and registry.is_done("c", 1)


def test_config_defaults_follow_the_contract() -> None:
    config = OrchestratorConfig.from_settings(load({"DOCKYARD_ORCHESTRATOR_ID": "o-1"}), env={})
    assert (config.orchestrator_id, config.queues, config.max_jobs) == ("o-1", ("default",), 4)
    assert (config.lease_s, config.heartbeat_s) == (15.0, 5.0)
    assert config.stop_grace_s == 10.0  # SIGTERM, then SIGKILL 10 s later
    assert config.keepalive_s == 10.0  # three per 30 s ack wait
    assert config.log_cap_bytes == 16 * 1024 * 1024
    env = {"DOCKYARD_QUEUES": "gpu,default", "DOCKYARD_MAX_JOBS": "8", "DOCKYARD_LEASE_S": "6"}
    tuned = OrchestratorConfig.from_settings(load(env), env={"DOCKYARD_DRAIN_S": "2.5"})
    assert (tuned.queues, tuned.max_jobs, tuned.heartbeat_s, tuned.drain_s) == (
        ("gpu", "default"),
        8,
        2.0,
        2.5,
    )
    with pytest.raises(ConfigError, match="DOCKYARD_DRAIN_S"):
        OrchestratorConfig.from_settings(load({}), env={"DOCKYARD_DRAIN_S": "soon"})


def test_the_metrics_port_is_off_unless_asked_for() -> None:
    assert OrchestratorConfig.from_settings(load({}), env={}).metrics_listen is None
    env = {"DOCKYARD_METRICS_LISTEN": "0.0.0.0:8702"}
    assert OrchestratorConfig.from_settings(load({}), env=env).metrics_listen == ("0.0.0.0", 8702)
    env = {"DOCKYARD_METRICS_LISTEN": ":9100"}
    assert OrchestratorConfig.from_settings(load({}), env=env).metrics_listen == ("127.0.0.1", 9100)
    with pytest.raises(ConfigError, match="DOCKYARD_METRICS_LISTEN"):
        OrchestratorConfig.from_settings(load({}), env={"DOCKYARD_METRICS_LISTEN": "8702"})


def test_heartbeat_keys_are_valid_and_distinct() -> None:
    ids = ["host-1234", "host.example.com-1", "host_example_com-1", "a=b", "a b", "ünï"]
    keys = [names.heartbeat_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[-/_=.A-Za-z0-9]+", key) for key in keys)
    assert keys[0] == "host-1234"


def test_heartbeat_round_trips() -> None:
    beat = Heartbeat(
        orchestrator="o",
        queues=["default"],
        max_jobs=4,
        lease_s=15.0,
        started_at=T0,
        sent_at=T0,
        jobs=[RunningJob(job_id="j", attempt=2, log_seq=17)],
    )
    assert decode_heartbeat(encode_heartbeat(beat)) == beat
