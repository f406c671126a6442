"""Whether a failed attempt runs again, and after how long: decided from its typed reason."""

from __future__ import annotations

from dockyard.core.reasons import NEVER_RETRIED, Reason
from dockyard.core.spec import RetryPolicy


def should_retry(policy: RetryPolicy, attempt: int, reason: Reason, exit_code: int | None) -> bool:
    if reason in NEVER_RETRIED or attempt >= policy.max_attempts:
        return False
    if reason not in policy.on:
        return False
    if reason == "exit_code" and policy.exit_codes is not None:
        return exit_code in policy.exit_codes
    return True


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """`backoff_s * backoff_factor^(attempt-1)`, capped at `max_backoff_s`."""
    delay = policy.backoff_s * policy.backoff_factor ** (attempt - 1)
    return float(min(delay, policy.max_backoff_s))
