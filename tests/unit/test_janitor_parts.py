"""The janitor's small pure parts: its schedule, its configuration, the ledger watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dockyard.config import ConfigError, load
from dockyard.janitor.config import DAY_S, JanitorConfig, parse_select
from dockyard.janitor.ledger_watch import LedgerWatch
from dockyard.janitor.schedule import Cron, Every, schedule_for

T0 = datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)


def test_an_interval_counts_from_the_last_start_and_never_overlaps() -> None:
    every = Every(30)
    assert every.next_start(None, T0) == T0  # the first sweep at once
    assert every.next_start(T0, T0 + timedelta(seconds=5)) == T0 + timedelta(seconds=30)
    late = T0 + timedelta(seconds=45)  # the sweep took longer than the interval
    assert every.next_start(T0, late) == late
    assert every.period_s(T0) == 30


def test_a_cron_fires_at_its_next_time_after_now() -> None:
    cron = Cron("*/5 * * * *")
    assert cron.next_start(None, T0) == datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    # Missed times are not made up: the next one after now.
    now = datetime(2026, 1, 1, 13, 2, tzinfo=UTC)
    assert cron.next_start(T0, now) == datetime(2026, 1, 1, 13, 5, tzinfo=UTC)
    assert cron.period_s(T0) == 300


def test_the_cron_wins_over_the_interval() -> None:
    assert isinstance(schedule_for(JanitorConfig(cron="0 * * * *")), Cron)
    assert isinstance(schedule_for(JanitorConfig(interval_s=5)), Every)
    with pytest.raises(ValueError, match="cron"):
        Cron("* * * *")


def test_config_from_the_environment() -> None:
    env = {
        "DOCKYARD_JANITOR_INTERVAL_S": "12",
        "DOCKYARD_LEASE_S": "9",
        "DOCKYARD_JANITOR_GRACE_S": "5",
        "DOCKYARD_LOG_RETENTION_DAYS": "1.5",
        "DOCKYARD_JOB_RETENTION_DAYS": "0",
        "DOCKYARD_JANITOR_SELECT": "team=a, dockyard.orchestrator",
        "DOCKYARD_JANITOR_METRICS_LISTEN": "0.0.0.0:9102",
    }
    config = JanitorConfig.from_settings(load(env), env)
    assert (config.interval_s, config.lease_s, config.grace_s) == (12, 9, 5)
    assert (config.log_retention_s, config.job_retention_s) == (1.5 * DAY_S, 0)
    assert config.select == {"team": "a", "dockyard.orchestrator": None}
    assert config.metrics_listen == ("0.0.0.0", 9102)
    defaults = JanitorConfig.from_settings(load({}), {})
    assert (defaults.interval_s, defaults.cron, defaults.grace_s) == (30, None, 60)
    assert defaults.metrics_listen is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DOCKYARD_JANITOR_CRON", "every minute"),
        ("DOCKYARD_JANITOR_GRACE_S", "-1"),
        ("DOCKYARD_LOG_RETENTION_DAYS", "a week"),
        ("DOCKYARD_JANITOR_METRICS_LISTEN", "9102"),
        ("DOCKYARD_JANITOR_SELECT", "=x"),
    ],
)
def test_bad_config_names_its_variable(name: str, value: str) -> None:
    env = {name: value}
    with pytest.raises(ConfigError, match=name):
        JanitorConfig.from_settings(load(env), env)


def test_parse_select() -> None:
    assert parse_select("") == {}
    assert parse_select("a=1,b=,c") == {"a": "1", "b": "", "c": None}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_ledger_watch_reads_again_only_what_may_still_change() -> None:
    clock = Clock()
    watch = LedgerWatch(overlap_s=60, clock=clock)
    watch.observed(100)
    assert watch.final == 0  # a slow append below 100 may still commit
    clock.now = 30
    watch.observed(150)
    assert watch.final == 0
    clock.now = 61
    watch.observed(170)
    assert watch.final == 100  # 100 was the top a minute ago: everything below it is in
    clock.now = 95
    watch.observed(200)
    assert watch.final == 150
    watch.found({"a", "b"})
    watch.settled("a")
    assert watch.jobs == {"b"}
