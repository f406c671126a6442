"""The egress deny list and the host's own services, enforced on the real engine.

Every address a job is sent to here is one the test made: a network namespace joined to the
host by a veth pair holds 198.18.77.2 (deny-listed) and 198.19.77.2 (not), and a listener on
the host answers on a job network's gateway. The link-local block (cloud metadata) is proven
by reading the rules back: no test sends anything to 169.254.169.254 or off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
import pytest_asyncio

from dockyard.orchestrator.egress import EgressGuard
from dockyard.orchestrator.egress_rules import EgressChains
from tests.support.orchestration import (
    ControlPlane,
    OrchestratorProcess,
    new_orchestrator_id,
    running_orchestrator,
    spec,
    wait_for_heartbeat,
)

IMAGE = "dockyard/busybox:latest"
DENIED = "198.18.77.2"
ALLOWED = "198.19.77.2"
PORT = 7071
REJECT = "-j REJECT --reject-with icmp-admin-prohibited"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def rules() -> str:
    return sh("iptables", "-S")


# Answers every connection with a line naming the address it was reached on.
_LISTENER = """
import socket, sys, threading
def serve(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(sys.argv[1]))); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(f"hello-{addr}\\n".encode()); c.close()
for a in sys.argv[2:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.fixture
def far_hosts() -> Iterator[None]:
    """A namespace with a denied and an allowed address, routed through a veth pair; a
    listener in it. Everything is removed afterwards, whatever happened."""
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"dyt-{tag}", f"dytv{tag}", f"dytp{tag}"
    listener: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", "198.18.77.1/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        # Both test ranges end at this veth, never at the host's default route.
        sh("ip", "route", "add", "198.19.77.0/24", "dev", host_end)
        inside = ("ip", "netns", "exec", ns, "ip")
        sh(*inside, "addr", "add", f"{DENIED}/24", "dev", ns_end)
        sh(*inside, "addr", "add", f"{ALLOWED}/24", "dev", ns_end)
        sh(*inside, "link", "set", ns_end, "up")
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "route", "add", "default", "via", "198.18.77.1")
        listener = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                _LISTENER,
                str(PORT),
                DENIED,
                ALLOWED,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
            if listener.stdout is not None:
                listener.stdout.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", host_end)  # takes its peer and the route with it
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "netns", "del", ns)
    assert ns not in sh("ip", "netns", "list") and host_end not in sh("ip", "link")


@pytest_asyncio.fixture(loop_scope="session")
async def host_listener() -> AsyncIterator[int]:
    """A service on every host address (as sshd or a 0.0.0.0 metrics port would be)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello-host\n")
        await writer.drain()
        writer.close()

    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = int(probe.getsockname()[1])
    server = await asyncio.start_server(answer, "0.0.0.0", port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def _connect(address: str, port: int | str) -> str:
    return f"echo {address}:$(nc -w 3 {address} {port} </dev/null || echo refused)"


async def _job_output(control: ControlPlane, job_id: str) -> list[str]:
    job = await control.wait_finished(job_id, timeout_s=60)
    assert job.status == "succeeded", job.error
    return [line.text for line in await control.log_lines(job_id) if line.stream == "stdout"]


# The job reaches its network's gateway (Docker's first address) on the host's listener.
def _gateway(port: int) -> str:
    reach = f"nc -w 3 $gw {port} </dev/null || echo refused"
    return f'ip=$(hostname -i); gw="${{ip%.*}}.1"; echo gw:$({reach})'


async def test_egress_job_cannot_reach_a_denied_address_but_reaches_another(
    nats_url: str, database_url: str, busybox_image: str, far_hosts: None
) -> None:
    orchestrator_id = new_orchestrator_id()
    chains = EgressChains.of(orchestrator_id)
    command = f"{_connect(ALLOWED, PORT)}; {_connect(DENIED, PORT)}"
    async with (
        ControlPlane(nats_url, database_url) as control,
        running_orchestrator(
            nats_url, orchestrator_id, egress_deny=("default", f"{DENIED}/32")
        ) as orchestrator,
    ):
        assert orchestrator.egress.error is None
        listed = rules()
        # The contract's default, read back (never tried): the metadata range is rejected.
        jobs = f"-A {chains.forward} -i {chains.bridges}+"
        assert f"{jobs} -m conntrack --ctorigdst 169.254.0.0/16 {REJECT}" in listed
        assert f"--ctorigdst {DENIED} {REJECT}" in listed
        assert f"-A DOCKER-USER -j {chains.forward}" in listed
        assert f"-A INPUT -j {chains.input}" in listed
        job_id = await control.submit(spec(IMAGE, "sh", "-c", command, network="egress"))
        out = await _job_output(control, job_id)
    assert out == [f"{ALLOWED}:hello-{ALLOWED}", f"{DENIED}:refused"]
    # Removed at shutdown: neither chain nor hook is left.
    assert chains.forward not in rules() and chains.input not in rules()


async def test_without_the_rules_the_same_job_reaches_both_so_the_block_is_the_rules(
    nats_url: str, database_url: str, busybox_image: str, far_hosts: None
) -> None:
    command = f"{_connect(ALLOWED, PORT)}; {_connect(DENIED, PORT)}"
    async with (
        ControlPlane(nats_url, database_url) as control,
        running_orchestrator(nats_url, egress_deny=None),
    ):
        job_id = await control.submit(spec(IMAGE, "sh", "-c", command, network="egress"))
        out = await _job_output(control, job_id)
    assert out == [f"{ALLOWED}:hello-{ALLOWED}", f"{DENIED}:hello-{DENIED}"]


@pytest.mark.parametrize("network", ["isolated", "egress"])
async def test_no_job_network_reaches_a_host_service_through_its_gateway(
    nats_url: str, database_url: str, busybox_image: str, host_listener: int, network: str
) -> None:
    command = _gateway(host_listener)
    async with ControlPlane(nats_url, database_url) as control:
        async with running_orchestrator(nats_url, egress_deny=None):
            open_id = await control.submit(spec(IMAGE, "sh", "-c", command, network=network))
            assert await _job_output(control, open_id) == ["gw:hello-host"]  # the setup works
        async with running_orchestrator(nats_url, egress_deny=("default",)):
            job_id = await control.submit(spec(IMAGE, "sh", "-c", command, network=network))
            assert await _job_output(control, job_id) == ["gw:refused"]


async def test_orchestrator_that_cannot_install_rules_says_so_and_leaves_egress_jobs(
    nats_url: str, database_url: str, busybox_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", "dockyard.orchestrator.egress")
    async with (
        ControlPlane(nats_url, database_url) as control,
        running_orchestrator(
            nats_url,
            egress_deny=("default",),
            iptables="/nonexistent/iptables",  # as without privilege: iptables fails
            metrics_listen=("127.0.0.1", 0),
        ) as unable,
        aiohttp.ClientSession() as http,
    ):
        runner = await unable.serve_metrics()
        assert runner is not None
        try:
            host, port = runner.addresses[0][:2]
            async with http.get(f"http://{host}:{port}/readyz") as answer:
                body = await answer.json()
            assert answer.status == 503
            message = body["error"]["message"]
            assert "egress (egress deny list not enforced: /nonexistent/iptables" in message
            async with http.get(f"http://{host}:{port}/metrics") as answer:
                assert "dockyard_orchestrator_egress_enforced 0.0" in await answer.text()
        finally:
            await runner.cleanup()
        egress = await control.submit(spec(IMAGE, "echo", "out", network="egress"))
        plain = await control.submit(spec(IMAGE, "echo", "in", network="isolated"))
        assert (await control.wait_finished(plain)).status == "succeeded"
        await asyncio.sleep(2)  # several claim rounds
        left = await control.job(egress)
        assert (left.status, left.attempt, left.orchestrator) == ("queued", 1, None)
        # Another orchestrator, one that enforces the list, takes it.
        async with running_orchestrator(nats_url, egress_deny=("default",)) as able:
            done = await control.wait_finished(egress, timeout_s=60)
        assert (done.status, done.orchestrator) == ("succeeded", able.config.orchestrator_id)
    warnings = [r.getMessage() for r in caplog.records if "egress_unenforced" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every check


async def test_rules_flushed_under_a_running_orchestrator_are_written_again() -> None:
    guard = EgressGuard(EgressChains.of(new_orchestrator_id()), ("198.18.0.9",))
    try:
        await guard.install()
        assert guard.error is None
        sh("iptables", "-D", "DOCKER-USER", "-j", guard.chains.forward)  # as a flush would
        sh("iptables", "-A", guard.chains.input, "-j", "ACCEPT")  # or a changed chain
        await guard.check()
        assert guard.installs == 2 and guard.error is None
        listed = rules()
        assert listed.count(f"-A DOCKER-USER -j {guard.chains.forward}") == 1
        assert f"-A {guard.chains.input} -j ACCEPT" not in listed
    finally:
        await guard.remove()
    assert guard.chains.forward not in rules()


async def test_orchestrator_killed_then_started_again_replaces_its_stale_rules(
    nats_url: str, database_url: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    chains = EgressChains.of(orchestrator_id)
    env = {"DOCKYARD_EGRESS_DENY": "198.18.0.7", "DOCKYARD_ORCHESTRATOR_ID": orchestrator_id}
    first = OrchestratorProcess(nats_url, orchestrator_id, **env)
    again = OrchestratorProcess(nats_url, orchestrator_id, **env)
    try:
        async with ControlPlane(nats_url, database_url) as control:
            await first.start()
            await wait_for_heartbeat(control.js, orchestrator_id)
            await _until_listed(f"-A DOCKER-USER -j {chains.forward}")
            await first.kill()  # SIGKILL: nothing removes the rules
            assert f"-A DOCKER-USER -j {chains.forward}" in rules()
            sh("iptables", "-A", chains.forward, "-j", "ACCEPT")  # a stale leftover
            await again.start()
            await _until_listed(f"--ctorigdst 198.18.0.7 {REJECT}")
            await _until_gone(f"-A {chains.forward} -j ACCEPT")
            listed = rules()
            assert listed.count(f"-A DOCKER-USER -j {chains.forward}") == 1
            assert listed.count(f"-A INPUT -j {chains.input}") == 1
            again.signal(signal.SIGTERM)
            assert await again.wait(60) == 0, again.output()
        assert chains.forward not in rules() and chains.input not in rules()
    finally:
        await first.kill()
        await again.kill()
        await EgressGuard(chains, ()).remove()  # whatever a failure left


async def _until_listed(rule: str) -> None:
    await _until(lambda: rule in rules(), f"listed {rule}")


async def _until_gone(rule: str) -> None:
    await _until(lambda: rule not in rules(), f"removed {rule}")


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")
        await asyncio.sleep(0.2)


async def test_with_the_rules_a_job_still_reaches_its_sidecar_by_name(
    nats_url: str, database_url: str, busybox_image: str
) -> None:
    serve = "while true; do echo hello-from-sidecar | nc -l -p 8080; done"
    reach = "for i in $(seq 1 50); do nc -w 2 helper 8080 </dev/null && exit 0; sleep 0.1; done"
    sidecar = {"name": "helper", "image": IMAGE, "command": ["sh", "-c", serve]}
    async with (
        ControlPlane(nats_url, database_url) as control,
        running_orchestrator(nats_url, egress_deny=("default",)) as orchestrator,
    ):
        assert orchestrator.egress.error is None
        job_id = await control.submit(spec(IMAGE, "sh", "-c", reach, sidecars=[sidecar]))
        assert await _job_output(control, job_id) == ["hello-from-sidecar"]
