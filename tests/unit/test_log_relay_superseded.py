"""A replaced attempt's late lines are never kept (log_relay/superseded.py): once a later
attempt's batch is seen, an earlier attempt's batch is kept only if it lies wholly before
the later attempt's first seq."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockyard.job_logs.chunks import Chunk
from dockyard.log_relay.superseded import LaterAttempts

JOB = "0195f0c8-0000-7000-8000-0000000000aa"


def batch(first: int, last: int, attempt: int, job_id: str = JOB) -> list[Chunk]:
    return [Chunk(job_id, first, last, b"", attempt=attempt)]


def test_late_lines_of_a_replaced_attempt_are_dropped_and_the_new_attempts_kept() -> None:
    later = LaterAttempts()
    assert later.admit(batch(1, 5, attempt=1))
    assert later.admit(batch(6, 7, attempt=2))  # numbered after the 5 the stream held
    assert not later.admit(batch(6, 12, attempt=1))  # the cut-off orchestrator's, late
    assert later.admit(batch(8, 20, attempt=2))
    assert later.admit(batch(3, 5, attempt=1))  # a redelivery of what was stored before


def test_jobs_do_not_fence_each_other_and_batches_without_an_attempt_pass() -> None:
    later = LaterAttempts()
    assert later.admit(batch(1, 5, attempt=2))
    other = "0195f0c8-0000-7000-8000-0000000000bb"
    assert later.admit(batch(1, 5, attempt=1, job_id=other))
    assert later.admit(batch(9, 9, attempt=0))  # an earlier version's batch
    assert later.admit([])


def test_only_the_most_recent_jobs_are_remembered() -> None:
    later = LaterAttempts(remembered=2)
    for n in range(3):
        later.admit(batch(1, 1, attempt=2, job_id=f"{JOB[:-1]}{n}"))
    assert later.started(f"{JOB[:-1]}0") == {} and later.started(f"{JOB[:-1]}2") == {2: 1}


@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 10)), min_size=1, max_size=30),
)
def test_no_kept_line_of_an_attempt_lies_at_or_past_a_later_attempts_start(
    sends: list[tuple[int, int]],
) -> None:
    """Batches from several attempts, interleaved as late ones could reach the stream:
    whatever is kept of an earlier attempt lies before the first seq of every later attempt
    seen before it, and nothing is dropped unless a later attempt was seen."""
    later = LaterAttempts()
    next_seq: dict[int, int] = {}
    starts: dict[int, int] = {}
    for attempt, size in sends:
        # A new attempt numbers after every line sent so far; an old one goes on with its own.
        first = next_seq.get(attempt, max(next_seq.values(), default=1))
        next_seq[attempt] = first + size
        kept = later.admit(batch(first, first + size - 1, attempt))
        seen_later = [s for a, s in starts.items() if a > attempt]
        if kept:
            assert all(first + size - 1 < s for s in seen_later)
            starts.setdefault(attempt, first)
        else:
            assert seen_later
