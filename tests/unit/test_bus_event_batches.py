"""How the batching sink reads the server's answer to a batch's commit (no I/O)."""

from __future__ import annotations

import pytest

from dockyard.bus import BusRejected
from dockyard.bus.event_batches import NoAtomicBatches, committed_seq


def test_a_committed_batch_gives_its_last_sequence() -> None:
    reply = b'{"stream":"DOCKYARD_EVENTS","seq":42,"batch":"b1","count":3}'
    assert committed_seq(reply, "b1", 3) == 42


def test_a_plain_ack_means_the_server_does_not_batch() -> None:
    """A server before 2.12 ignores the batch headers: it stored the others unacked and acks
    the commit as one more message."""
    with pytest.raises(NoAtomicBatches):
        committed_seq(b'{"stream":"DOCKYARD_EVENTS","seq":42}', "b1", 3)
    with pytest.raises(NoAtomicBatches):  # some other batch's ack, or a partial one
        committed_seq(b'{"stream":"S","seq":42,"batch":"b1","count":2}', "b1", 3)


def test_a_stream_without_atomic_batches_is_told_apart_from_a_refusal() -> None:
    disabled = b'{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"}}'
    with pytest.raises(NoAtomicBatches):
        committed_seq(disabled, "b1", 3)
    duplicate = (
        b'{"error":{"code":400,"err_code":10201,'
        b'"description":"atomic publish batch contains duplicate message id"}}'
    )
    with pytest.raises(BusRejected) as refused:
        committed_seq(duplicate, "b1", 3)
    assert refused.value.err_code == 10201
