"""Backoff schedules, asserted: a job's retry backoff (`backoff_s`, `backoff_factor`,
`max_backoff_s`) and the orchestrator's own retries (exponential, jittered, capped)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.core.retry import backoff_s
from dockyard.core.spec import RetryPolicy
from dockyard.orchestrator.claimer import _deliveries
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.retrying import ENGINE_RETRY, RETRY
from dockyard.process.backoff import Backoff

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 100),
    backoff_s=st.floats(0, 86_400),
    backoff_factor=st.floats(1, 10),
    max_backoff_s=st.floats(0, 86_400),
).filter(lambda p: p.max_backoff_s >= p.backoff_s)
schedules = st.builds(
    Backoff,
    base_s=st.floats(0.001, 60),
    cap_s=st.floats(0.001, 3600),
    factor=st.floats(1, 10),
    jitter=st.floats(0, 1),
)
failures = st.integers(1, 10_000)
draws = st.floats(0, 1, exclude_max=True)


@given(policies, st.integers(1, 100))
def test_a_retry_waits_backoff_times_factor_to_the_attempt_capped(
    policy: RetryPolicy, attempt: int
) -> None:
    delay = backoff_s(policy, attempt)

    uncapped = policy.backoff_s * policy.backoff_factor ** (attempt - 1)
    assert delay == pytest.approx(min(uncapped, policy.max_backoff_s))
    assert 0 <= delay <= policy.max_backoff_s
    assert backoff_s(policy, attempt + 1) >= delay  # never shorter for a later attempt


def test_the_contract_default_retry_schedule() -> None:
    policy = RetryPolicy(max_attempts=12)  # backoff_s 1, factor 2, max 300

    assert [backoff_s(policy, n) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300
    ]  # fmt: skip


@given(schedules, failures, draws)
def test_a_wait_falls_within_its_schedule(schedule: Backoff, n: int, draw: float) -> None:
    delay = schedule.delay(n, lambda: draw)

    assert schedule.floor(n) <= delay <= schedule.ceiling(n) <= schedule.cap_s
    # Past 64 doublings it stops growing (it is long at its cap by then).
    exact = schedule.base_s * schedule.factor ** min(n - 1, 64)
    assert schedule.ceiling(n) == pytest.approx(min(schedule.cap_s, exact))


@given(schedules, failures)
def test_the_schedule_grows_until_its_cap_and_stays_there(schedule: Backoff, n: int) -> None:
    assert schedule.ceiling(n + 1) >= schedule.ceiling(n)
    assert schedule.floor(n) == pytest.approx(schedule.ceiling(n) * (1 - schedule.jitter))


def test_jitter_spreads_the_waits() -> None:
    waits = {round(RETRY.delay(20), 6) for _ in range(50)}

    assert len(waits) > 40  # orchestrators that failed together do not retry in step
    assert all(1.6 <= w <= 2.0 for w in waits)


def test_the_orchestrators_schedules() -> None:
    assert [RETRY.ceiling(n) for n in (1, 2, 3, 6, 7, 100)] == [0.05, 0.1, 0.2, 1.6, 2.0, 2.0]
    assert [ENGINE_RETRY.ceiling(n) for n in (1, 2, 5, 6, 1000)] == [0.2, 0.4, 3.2, 5.0, 5.0]
    claims = OrchestratorConfig(orchestrator_id="o").claim_backoff
    # The old fixed 1 s is the first wait; an offer that keeps coming back waits up to 30 s.
    assert [claims.ceiling(n) for n in (1, 2, 3, 5, 6, 50)] == [1, 2, 4, 16, 30, 30]


def _msg(metadata: Any) -> Any:
    return SimpleNamespace(metadata=metadata)


class _NotJetStream:
    @property
    def metadata(self) -> Any:
        raise nats.errors.NotJSMessageError


def test_a_claim_retry_waits_by_how_often_the_offer_came_back() -> None:
    assert _deliveries(_msg(SimpleNamespace(num_delivered=4))) == 4
    assert _deliveries(_NotJetStream()) == 1  # type: ignore[arg-type]
