"""Why a job attempt ended other than by succeeding: the contract's `reason` values."""

from __future__ import annotations

from typing import Final, Literal, get_args

Reason = Literal[
    "exit_code",
    "oom_killed",
    "timed_out",
    "cancelled",
    "image_pull_failed",
    "container_error",
    "orchestrator_lost",
    "log_limit",
]

ALL_REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

# What retries when a spec says nothing (`retry.on` default).
RETRYABLE_REASONS: Final[tuple[Reason, ...]] = (
    "exit_code",
    "oom_killed",
    "timed_out",
    "orchestrator_lost",
    "container_error",
)

# Retrying these would only repeat the same outcome or override the user's wish.
NEVER_RETRIED: Final[frozenset[Reason]] = frozenset({"cancelled", "image_pull_failed"})
