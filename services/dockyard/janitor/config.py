"""The janitor's tunables: the contract's variables, plus its own few, each named once.

Beyond the contract (`DOCKYARD_JANITOR_INTERVAL_S`, `DOCKYARD_JANITOR_CRON`, `DOCKYARD_LEASE_S`)
the janitor reads, all optional:

- `DOCKYARD_JANITOR_GRACE_S` (60): a leftover is removed only this long after its attempt
  ended (or, for an unknown job, after it was created).
- `DOCKYARD_JANITOR_STUCK_MARGIN_S` (120): `running` past its timeout plus this is ended.
- `DOCKYARD_JANITOR_STARTING_TIMEOUT_S` (900): `starting` longer than this is ended (an image
  pull alone may take 600 s).
- `DOCKYARD_JANITOR_REOFFER_AFTER_S` (900): `queued` this long, with no offer left in its
  queue, is offered again.
- `DOCKYARD_LOG_RETENTION_DAYS` (7): finished jobs' log lines are removed after this (0: keep).
- `DOCKYARD_JOB_RETENTION_DAYS` (30): finished jobs' read-model rows likewise, once none of
  their log lines is left (0: keep). Events are never removed.
- `DOCKYARD_JANITOR_SELECT` (none): `label=value,...`, only Docker resources also carrying these.
- `DOCKYARD_JANITOR_METRICS_LISTEN` (off): `host:port` to serve `/metrics` and `/healthz` on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from croniter import croniter
from msgspec import Struct, field

from dockyard.config import ConfigError, Settings, Variable

DAY_S: Final = 86_400.0

_JANITOR: Final = ("janitor",)

# The janitor's own variables (those above), as the configuration reference shows them.
VARIABLES: Final = (
    Variable(
        name="DOCKYARD_JANITOR_GRACE_S",
        default="60",
        meaning="a leftover container or network is removed only this many seconds after its "
        "attempt ended (for an unknown job, after it was created).",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_STUCK_MARGIN_S",
        default="120",
        meaning="a job `running` past its timeout plus this many seconds is ended as `timed_out`.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_STARTING_TIMEOUT_S",
        default="900",
        meaning="a job `starting` longer than this (an image pull included) is ended as "
        "`container_error`.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_REOFFER_AFTER_S",
        default="900",
        meaning="a job `queued` this long with no offer left in its queue is offered again.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_LOG_RETENTION_DAYS",
        default="7",
        meaning="finished jobs' log lines are removed after this many days; 0 keeps them.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JOB_RETENTION_DAYS",
        default="30",
        meaning="finished jobs' read-model rows likewise, once none of their log lines is "
        "left; 0 keeps them. Events are never removed, and a purged job stays out of "
        "`dockyard db rebuild`.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_SELECT",
        default="none",
        meaning="`label=value,...` (a bare `label`: any value): the janitor touches only "
        "Docker resources also carrying these.",
        read_by=_JANITOR,
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_METRICS_LISTEN",
        default="none",
        meaning="`host:port` for the janitor's `/metrics` and `/healthz`.",
        read_by=_JANITOR,
        group="janitor",
    ),
)


class JanitorConfig(Struct, frozen=True, kw_only=True):
    interval_s: float = 30.0
    cron: str | None = None
    lease_s: float = 15.0
    # Owners clean up after themselves: the janitor waits this long after an attempt ended
    # (or a resource of an unknown job was created) before it removes anything of it.
    grace_s: float = 60.0
    # SIGTERM, then SIGKILL after this, for a leftover container still running.
    stop_grace_s: float = 10.0
    stuck_margin_s: float = 120.0
    starting_timeout_s: float = 900.0
    # Past the 10-minute duplicate window of EVENTS (where offers are), so a re-offer is not
    # dropped as a repeat.
    reoffer_after_s: float = 900.0
    log_retention_s: float = 7 * DAY_S
    job_retention_s: float = 30 * DAY_S
    # Extra label filters on the Docker side (value None: any value): tests, shared engines.
    select: dict[str, str | None] = field(default_factory=dict)
    metrics_listen: tuple[str, int] | None = None
    # Docker removals in flight at once.
    docker_concurrency: int = 4
    # How long a sweep waits for another janitor's sweep to end before skipping its turn;
    # None: one period of the schedule.
    lock_wait_s: float | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> JanitorConfig:
        env = os.environ if env is None else env
        if settings.janitor_cron is not None and not valid_cron(settings.janitor_cron):
            raise ConfigError(
                f"DOCKYARD_JANITOR_CRON: {settings.janitor_cron!r} is not a 5-field cron "
                "expression (minute hour day month weekday)"
            )
        log_days = _float(env, "DOCKYARD_LOG_RETENTION_DAYS", 7.0)
        job_days = _float(env, "DOCKYARD_JOB_RETENTION_DAYS", 30.0)
        metrics = env.get("DOCKYARD_JANITOR_METRICS_LISTEN")
        return cls(
            interval_s=settings.janitor_interval_s,
            cron=settings.janitor_cron,
            lease_s=settings.lease_s,
            grace_s=_float(env, "DOCKYARD_JANITOR_GRACE_S", 60.0),
            stuck_margin_s=_float(env, "DOCKYARD_JANITOR_STUCK_MARGIN_S", 120.0),
            starting_timeout_s=_float(env, "DOCKYARD_JANITOR_STARTING_TIMEOUT_S", 900.0),
            reoffer_after_s=_float(env, "DOCKYARD_JANITOR_REOFFER_AFTER_S", 900.0),
            log_retention_s=log_days * DAY_S,
            job_retention_s=job_days * DAY_S,
            select=parse_select(env.get("DOCKYARD_JANITOR_SELECT", "")),
            metrics_listen=_listen(metrics) if metrics else None,
        )


def valid_cron(expr: str) -> bool:
    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def parse_select(text: str) -> dict[str, str | None]:
    """`a=b,c` -> {"a": "b", "c": None} (a bare label matches any value)."""
    select: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not key:
            raise ConfigError(f"DOCKYARD_JANITOR_SELECT: {item!r} is not label or label=value")
        select[key] = value if sep else None
    return select


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}: must be at least 0")
    return value


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"DOCKYARD_JANITOR_METRICS_LISTEN: {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
