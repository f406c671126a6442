"""On a cluster, whether a finished job's lines are all stored is judged against the LOGS
stream's head as its leader tells it, and only while that leader hears from a majority of the
replicas (log_relay/completion.py): a replica cut off from the others, or lagging, answered the
direct get of the job's last batch from a log without its last batches, and a room sent `end`
after 9 lines of 50 (tests/cluster/test_chaos.py, the minority leader)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dockyard.log_relay.completion import Completion


class Js:
    """The two JetStream answers Completion reads: stream info, the consumer's ack floor."""

    def __init__(self, *, current: list[bool], head: int, floor: int, leader: str = "n1") -> None:
        replicas = [SimpleNamespace(current=c) for c in current]
        cluster = SimpleNamespace(leader=leader, replicas=replicas)
        self.info = SimpleNamespace(cluster=cluster, state=SimpleNamespace(last_seq=head))
        self.floor = floor
        self.direct_gets = 0

    async def stream_info(self, stream: str) -> Any:
        return self.info

    async def consumer_info(self, stream: str, durable: str) -> Any:
        return SimpleNamespace(ack_floor=SimpleNamespace(stream_seq=self.floor))

    async def get_last_msg(self, stream: str, subject: str) -> Any:
        self.direct_gets += 1
        return SimpleNamespace(seq=1)  # a stale replica's answer: never asked on a cluster


async def test_a_leader_without_a_majority_says_nothing() -> None:
    js = Js(current=[False, False], head=100, floor=100)
    assert not await Completion(js, floor_ttl_s=0).all_stored("job")  # type: ignore[arg-type]
    assert js.direct_gets == 0


async def test_all_stored_once_the_ack_floor_reaches_the_head_read_when_the_job_was_over() -> None:
    js = Js(current=[True, False], head=100, floor=60)
    completion = Completion(js, floor_ttl_s=0)  # type: ignore[arg-type]
    assert not await completion.all_stored("job")
    js.info.state.last_seq = 500  # other jobs' lines since: the head read first still holds
    js.floor = 100
    assert await completion.all_stored("job")
    assert js.direct_gets == 0
