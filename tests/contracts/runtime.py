"""The one contract every `ContainerRuntime` keeps, run against Docker and the fake alike.

A subclass provides the `runtime` and `image` fixtures. Containers are told what to do by a
`Behaviour`: a busybox shell script for a real engine, which also carries itself as JSON in
the command's spare arguments so that the fake can read the same instructions.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from msgspec.structs import replace

from dockyard.bus.names import LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.core.spec import JobSpec, Sidecar
from dockyard.runtime import (
    AlreadyExists,
    Chunk,
    ContainerError,
    ContainerPlan,
    ContainerRuntime,
    ExitStatus,
    ImagePullFailed,
    JobPlan,
    LineSplitter,
    NotFound,
    Script,
    plan_job,
)
from dockyard.runtime.ports import ResourceKind

_TAG = "dockyard-behaviour"
FOREVER = 3600.0


@dataclass(frozen=True)
class Behaviour:
    """What a test container does: print, maybe sleep (ignoring SIGTERM), exit."""

    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()
    count: int = 0  # then `seq 1 count` on stdout
    sleep_s: float = 0.0
    ignores_term: bool = False
    exit_code: int = 0

    def command(self) -> list[str]:
        steps = ["trap '' TERM"] if self.ignores_term else []
        if self.stdout:
            steps.append("printf '%s\\n' " + " ".join(map(shlex.quote, self.stdout)))
        if self.stderr:
            steps.append("printf '%s\\n' " + " ".join(map(shlex.quote, self.stderr)) + " >&2")
        if self.count:
            steps.append(f"seq 1 {self.count}")
        if self.sleep_s:
            steps.append(f"sleep {self.sleep_s:g}")
        steps.append(f"exit {self.exit_code}")
        payload = json.dumps(asdict(self))
        return ["sh", "-c", "; ".join(steps), _TAG, payload]

    def script(self) -> Script:
        out = [*self.stdout, *map(str, range(1, self.count + 1))]
        chunks: list[Chunk] = [("stdout", f"{line}\n".encode()) for line in out]
        chunks += [("stderr", f"{line}\n".encode()) for line in self.stderr]
        runs_for = math.inf if self.sleep_s >= FOREVER else self.sleep_s
        return Script(tuple(chunks), self.exit_code, False, runs_for, self.ignores_term)


def script_from_command(plan: ContainerPlan) -> Script:
    """For `FakeRuntime(script=...)`: run the `Behaviour` a contract command carries."""
    command = plan.config.get("Cmd") or []
    if len(command) == 5 and command[3] == _TAG:
        fields = json.loads(command[4])
        fields["stdout"], fields["stderr"] = tuple(fields["stdout"]), tuple(fields["stderr"])
        return Behaviour(**fields).script()
    return Script()


async def run_to_end(
    runtime: ContainerRuntime, plan: ContainerPlan, timeout_s: float = 60
) -> tuple[ExitStatus, dict[str, list[str]]]:
    """Create, attach, start, read everything and wait: the exit status and lines per stream."""
    container = await runtime.create_container(plan)
    lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    async with asyncio.timeout(timeout_s), runtime.stream_output(container) as output:
        await runtime.start(container)
        async for stream, data in output:
            lines[stream] += splitters[stream].feed(data)
        status = await runtime.wait(container)
    for name, splitter in splitters.items():
        lines[name] += splitter.flush()
    return status, lines


class RuntimeContract:
    """Subclasses provide `runtime` and `image`; every test leaves nothing labelled behind."""

    @pytest.fixture
    def runtime(self) -> ContainerRuntime:
        raise NotImplementedError

    @pytest.fixture
    def image(self) -> str:
        raise NotImplementedError

    rt: ContainerRuntime
    orchestrator: str
    image_ref: str

    @pytest_asyncio.fixture(autouse=True, loop_scope="session")
    async def _owner(self, runtime: ContainerRuntime) -> AsyncIterator[None]:
        self.rt = runtime
        self.orchestrator = f"contract-{uuid.uuid4().hex[:12]}"
        yield
        mine = {LABEL_ORCHESTRATOR: self.orchestrator}
        found = await runtime.list_labelled(mine)
        for resource in sorted(found, key=lambda r: r.kind):  # containers before networks
            if resource.kind == "container":
                await runtime.remove(resource.id)
            else:
                await runtime.remove_network(resource.id)
        assert await runtime.list_labelled(mine) == []

    def plan(self, behaviour: Behaviour, **spec: object) -> ContainerPlan:
        return self.job_plan(behaviour, **spec).job

    def job_plan(self, behaviour: Behaviour, **spec: object) -> JobPlan:
        job_spec = replace(JobSpec(image=self.image_ref), command=behaviour.command(), **spec)
        return plan_job(
            job_spec, job_id=uuid.uuid4().hex, attempt=1, orchestrator=self.orchestrator
        )

    @pytest.fixture(autouse=True)
    def _image(self, image: str) -> None:
        self.image_ref = image

    async def test_captures_each_stream_in_order_and_exit_zero(self) -> None:
        behaviour = Behaviour(stdout=("one", "two", "three"), stderr=("oops", "again"))

        status, lines = await run_to_end(self.rt, self.plan(behaviour))

        assert status == ExitStatus(0, oom_killed=False)
        assert lines == {"stdout": ["one", "two", "three"], "stderr": ["oops", "again"]}

    async def test_reports_a_nonzero_exit_code(self) -> None:
        status, _ = await run_to_end(self.rt, self.plan(Behaviour(exit_code=3)))

        assert (status.exit_code, status.oom_killed) == (3, False)

    async def test_reads_a_burst_completely(self) -> None:
        status, lines = await run_to_end(self.rt, self.plan(Behaviour(count=20_000)))

        assert status.exit_code == 0
        assert lines["stdout"] == [str(n) for n in range(1, 20_001)]

    async def test_wait_again_gives_the_same_status(self) -> None:
        plan = self.plan(Behaviour(exit_code=5))
        first, _ = await run_to_end(self.rt, plan)

        assert await self.rt.wait(plan.name) == first

    async def test_second_create_of_the_same_attempt_is_already_exists(self) -> None:
        plan = self.plan(Behaviour())
        await self.rt.create_container(plan)

        with pytest.raises(AlreadyExists):
            await self.rt.create_container(plan)

    async def test_missing_image_fails_fast_as_image_pull_failed(self) -> None:
        missing = "dockyard/no-such-image:0"
        started = time.monotonic()
        with pytest.raises(ImagePullFailed, match=f"pull image {missing}"):
            await self.rt.ensure_image(missing, "if_not_present")
        with pytest.raises(ImagePullFailed, match=f"{missing} is not present .* never"):
            await self.rt.ensure_image(missing, "never")

        assert time.monotonic() - started < 10

    async def test_present_image_needs_no_pull(self) -> None:
        await self.rt.ensure_image(self.image_ref, "never")

    async def test_stop_ends_a_container_that_obeys_sigterm_at_once(self) -> None:
        status, elapsed = await self._stop_after_start(Behaviour(sleep_s=FOREVER), grace_s=20)

        assert status.exit_code == 128 + 15
        assert elapsed < 10

    async def test_stop_kills_a_container_ignoring_sigterm_after_the_grace(self) -> None:
        behaviour = Behaviour(sleep_s=FOREVER, ignores_term=True)

        status, elapsed = await self._stop_after_start(behaviour, grace_s=1)

        assert status.exit_code == 128 + 9
        assert 1 <= elapsed < 15

    async def test_remove_reports_removed_then_gone(self) -> None:
        container = await self.rt.create_container(self.plan(Behaviour()))

        assert await self.rt.remove(container) == "removed"
        assert await self.rt.remove(container) == "gone"
        with pytest.raises(NotFound):
            await self.rt.inspect(container)

    async def test_remove_kills_a_running_container(self) -> None:
        container = await self._started(Behaviour(sleep_s=FOREVER, ignores_term=True))

        assert await self.rt.remove(container) == "removed"
        assert await self.rt.list_labelled({LABEL_ORCHESTRATOR: self.orchestrator}) == []

    async def test_a_running_engine_answers_a_ping(self) -> None:
        await self.rt.ping(5.0)

    async def test_unknown_container_is_not_found(self) -> None:
        for call in (self.rt.start, self.rt.wait, self.rt.inspect):
            with pytest.raises(NotFound):
                await call("dockyard-no-such-container")

    async def test_usage_stats_of_a_container_not_running_is_none_of_none_not_found(
        self,
    ) -> None:
        # The stand-in for cgroup files out of reach (runtime.cgroups): a container not
        # running has no figures, and an unknown one is NotFound as for every other call.
        with pytest.raises(NotFound):
            await self.rt.usage_stats("dockyard-no-such-container")
        created = await self.rt.create_container(self.plan(Behaviour()))
        assert await self.rt.usage_stats(created) is None

    async def test_inspect_shows_labels_running_and_exit_code(self) -> None:
        plan = self.plan(Behaviour(sleep_s=FOREVER))
        created = await self.rt.inspect(await self.rt.create_container(self.plan(Behaviour())))
        container = await self._started_plan(plan)
        await asyncio.sleep(0.2)
        running = await self.rt.inspect(container)
        await self.rt.stop(container, grace_s=5)
        ended = await self.rt.inspect(container)

        assert running.running and running.exit_code is None and running.name == plan.name
        # How long it ran: what a restarted orchestrator judges a timeout by.
        assert created.ran_s is None
        assert running.ran_s is not None and 0.2 <= running.ran_s < 30
        assert ended.ran_s is not None and running.ran_s <= ended.ran_s < 30
        # When it started: what a restarted orchestrator's exit report vouches for.
        assert created.started_at is None
        assert running.started_at is not None and ended.started_at is not None
        since = datetime.now(UTC) - running.started_at
        assert timedelta(seconds=0.1) <= since < timedelta(seconds=30)
        assert abs(ended.started_at - running.started_at) < timedelta(seconds=0.01)
        # The engine adds the image's own labels to the container's.
        assert plan.config["Labels"].items() <= running.labels.items()
        assert (ended.running, ended.exit_code) == (False, 128 + 15)

    async def test_list_labelled_finds_the_network_and_containers_of_a_job(self) -> None:
        plan = self.job_plan(Behaviour(sleep_s=FOREVER), sidecars=(self._sidecar(),))
        assert plan.network is not None
        await self.rt.create_network(plan.network)
        await self._started_plan(plan.sidecars[0])
        await self.rt.create_container(plan.job)
        job_id = plan.job.config["Labels"][LABEL_JOB]

        found = await self.rt.list_labelled({LABEL_JOB: job_id, LABEL_ORCHESTRATOR: None})

        by_name = {r.name: (r.kind, r.running) for r in found}
        assert by_name == {
            plan.network.name: ("network", False),
            plan.sidecars[0].name: ("container", True),
            plan.job.name: ("container", False),
        }
        assert await self.rt.list_labelled({LABEL_JOB: "someone-else"}) == []

    async def test_network_in_use_is_refused_then_removed_once_free(self) -> None:
        plan = self.job_plan(Behaviour(sleep_s=FOREVER), network="isolated")
        assert plan.network is not None
        await self.rt.create_network(plan.network)
        with pytest.raises(AlreadyExists):
            await self.rt.create_network(plan.network)
        container = await self._started_plan(plan.job)

        with pytest.raises(ContainerError):
            await self.rt.remove_network(plan.network.name)
        await self.rt.remove(container)
        assert await self.rt.remove_network(plan.network.name) == "removed"
        assert await self.rt.remove_network(plan.network.name) == "gone"

    async def test_inspect_named_finds_a_container_or_network_by_its_exact_name_only(
        self,
    ) -> None:
        plan = self.job_plan(Behaviour(sleep_s=FOREVER), network="isolated")
        assert plan.network is not None
        network = await self.rt.create_network(plan.network)
        container = await self._started_plan(plan.job)

        found = await self.rt.inspect_named("container", plan.job.name)
        net = await self.rt.inspect_named("network", plan.network.name)

        assert found is not None and net is not None
        assert (found.kind, found.id, found.name, found.running) == (
            "container",
            container,
            plan.job.name,
            True,
        )
        assert plan.job.config["Labels"].items() <= found.labels.items()
        assert (net.kind, net.id, net.name) == ("network", network, plan.network.name)
        assert plan.network.config["Labels"].items() <= net.labels.items()
        # The engine also resolves ids and their prefixes: none of these is a name.
        not_names: list[tuple[ResourceKind, str]] = [
            ("container", container),
            ("container", container[:12]),
            ("network", network),
            ("network", network[:12]),
            ("container", plan.network.name),  # a network is not a container
            ("network", plan.job.name),
            ("container", "dockyard-no-such-container"),
            ("container", f"/{plan.job.name}"),
            ("container", f"../../networks/{plan.network.name}"),  # never in a request path
            ("network", ""),
        ]
        for kind, name in not_names:
            assert await self.rt.inspect_named(kind, name) is None, (kind, name)

    async def test_removing_by_id_never_removes_a_newer_one_that_took_the_name(self) -> None:
        plan = self.job_plan(Behaviour(), network="isolated")
        assert plan.network is not None
        old_network = await self.rt.create_network(plan.network)
        old = await self.rt.create_container(plan.job)
        assert await self.rt.remove(old) == "removed"
        assert await self.rt.remove_network(old_network) == "removed"
        new_network = await self.rt.create_network(plan.network)
        new = await self.rt.create_container(plan.job)

        assert await self.rt.remove(old) == "gone"
        assert await self.rt.remove_network(old_network) == "gone"
        found = await self.rt.inspect_named("container", plan.job.name)
        net = await self.rt.inspect_named("network", plan.network.name)
        assert found is not None and found.id == new
        assert net is not None and net.id == new_network

    def _sidecar(self) -> Sidecar:
        command = Behaviour(sleep_s=FOREVER).command()
        return Sidecar(name="helper", image=self.image_ref, command=command)

    async def _started(self, behaviour: Behaviour) -> str:
        return await self._started_plan(self.plan(behaviour))

    async def _started_plan(self, plan: ContainerPlan) -> str:
        container = await self.rt.create_container(plan)
        await self.rt.start(container)
        return container

    async def _stop_after_start(
        self, behaviour: Behaviour, grace_s: float
    ) -> tuple[ExitStatus, float]:
        container = await self._started(behaviour)
        await asyncio.sleep(0.3)  # let the shell install its trap
        started = time.monotonic()
        await self.rt.stop(container, grace_s=grace_s)
        elapsed = time.monotonic() - started
        return await self.rt.wait(container), elapsed
