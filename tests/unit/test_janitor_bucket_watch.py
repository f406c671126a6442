"""Missing heartbeat keys are judged only while the bucket has had one leader for a lease
(janitor/bucket_watch.py): while a NATS cluster elects, or its leader is cut off, no write
can land, so every key ages out at once though every orchestrator beats on."""

from __future__ import annotations

from dockyard.janitor.bucket_watch import STANDALONE, BucketWatch

LEASE = 6.0


def test_first_sight_of_a_leader_judges_at_once() -> None:
    assert BucketWatch(LEASE).why_not("n1", now=100.0) is None
    assert BucketWatch(LEASE).why_not(STANDALONE, now=100.0) is None


def test_no_leader_judges_nothing_then_a_whole_lease_after_one_is_elected() -> None:
    watch = BucketWatch(LEASE)
    assert watch.why_not("n1", now=100.0) is None
    assert "no leader" in (watch.why_not(None, now=101.0) or "")
    assert "no leader" in (watch.why_not(None, now=120.0) or "")
    why = watch.why_not("n2", now=121.0)
    assert why is not None and "n2" in why and "6 s" in why
    assert watch.why_not("n2", now=126.9) is not None
    assert watch.why_not("n2", now=127.0) is None


def test_a_new_leader_waits_a_lease_and_a_steady_one_never_does() -> None:
    watch = BucketWatch(LEASE)
    for now in (100.0, 110.0, 500.0):
        assert watch.why_not("n1", now=now) is None
    assert watch.why_not("n3", now=501.0) is not None  # elected meanwhile, unseen as None
    assert watch.why_not("n3", now=507.5) is None
