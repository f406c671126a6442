"""`dockyard up` runs NATS with one identity per service (issue #19, F1): a client without
credentials is refused, each child gets only its own identity (the orchestrator no database URL
and no tokens), and `dockyard credentials orchestrator NAME` adds an orchestrator host against
the running NATS, on which a job then runs, without restarting anything."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from tests.e2e.test_up import Up

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(busybox_image: str) -> Iterator[Up]:
    base = Path(tempfile.mkdtemp(prefix="dockyard-up-creds-"))
    base.chmod(0o755)
    up = Up(base / "data", base / "config")
    up.env.pop("DOCKYARD_NATS_CREDS", None)
    up.start()
    try:
        yield up
    finally:
        if up.proc is not None and up.proc.poll() is None:
            up.finish(signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)


def nats_url(stack: Up) -> str:
    return f"nats://127.0.0.1:{stack.ports[1]}"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_up_nats_refuses_a_client_without_credentials(stack: Up) -> None:
    async def anonymous() -> None:
        nc = NatsClient()
        try:
            await nc.connect(nats_url(stack), allow_reconnect=False, connect_timeout=5)
        finally:
            await nc.close()

    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        asyncio.run(anonymous())


def test_each_child_gets_its_own_identity_and_only_what_it_needs(stack: Up) -> None:
    credentials = stack.data_dir / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    for file in credentials.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    seen = {}
    for name, pid in stack.child_pids().items():
        env = environ(pid)
        creds = Path(env["DOCKYARD_NATS_CREDS"])
        assert creds.parent == credentials
        seen[name] = creds.name
    assert seen["scheduler"] == "scheduler.creds"
    assert seen["log-relay"] == "log-relay.creds"
    assert seen["janitor"] == "janitor.creds"
    assert seen["orchestrator"].startswith("orchestrator-")
    orchestrator = environ(stack.child_pids()["orchestrator"])
    assert "DOCKYARD_DATABASE_URL" not in orchestrator
    assert "DOCKYARD_TOKENS" not in orchestrator


def test_a_new_orchestrator_host_runs_a_job_without_restarting_nats(stack: Up) -> None:
    env = {**stack.env, "DOCKYARD_NATS_URL": nats_url(stack)}
    made = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "credentials", "orchestrator", "late-host",
         "--data-dir", str(stack.data_dir), "--queues", "late"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    env_file = Path(made.stdout.strip().splitlines()[-1])
    assert env_file.name == "orchestrator-late-host.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    host_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert host_env["DOCKYARD_ORCHESTRATOR_ID"] == "late-host"
    assert host_env["DOCKYARD_QUEUES"] == "late"
    assert Path(host_env["DOCKYARD_NATS_CREDS"]).is_absolute()
    # The secrets key the scheduler seals with: the new host opens the jobs it claims.
    assert host_env["DOCKYARD_SECRETS_KEY"] == str(stack.data_dir / "credentials" / "secrets.key")

    # The other host: only NATS's address and what the env file says.
    other = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DOCKYARD_") and k not in ("PGPASSWORD",)
    }
    other |= host_env | {"DOCKYARD_NATS_URL": nats_url(stack), "DOCKYARD_LOG_FORMAT": "text"}
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli", "orchestrator"],
        env=other, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = stack.cli(
            "submit", "--queue", "late", "--follow", "--secret", "GREETING=hello from late-host",
            "--", "sh", "-c", 'test "$GREETING" = "hello from late-host" && echo opened',
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "opened" in result.stdout
        job_id = result.stdout.splitlines()[0].strip()
        assert "late-host" in stack.cli("status", job_id).stdout
    finally:
        orchestrator.send_signal(signal.SIGTERM)
        output, _ = orchestrator.communicate(timeout=60)
    assert "nats.permission_denied" not in output, output
    assert "orchestrator.started id=late-host" in output, output
    assert "topology.waiting" not in output, output  # its queue's consumer was made with it
    text = "".join(stack.output)
    assert text.count("JetStream at") == 1  # one NATS start: nothing was restarted
    assert "nats.permission_denied" not in text, text
    assert "nats.unprotected" not in text, text  # no development mode under `dockyard up`
