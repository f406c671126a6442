"""`scripts/demo`, the quick start's first command, run as CI would: non-interactively, on free
ports, with a fresh data dir; the demo job's log reaches the terminal and the stack stops."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout(600)
def test_demo_streams_the_job_and_stops_the_stack(busybox_image: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="dockyard-demo-"))
    base.chmod(0o755)  # PostgreSQL's own user must enter it
    nats_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
        "DOCKYARD_DEMO_DATA_DIR": str(base / "data"),
        "DOCKYARD_API_LISTEN": f"127.0.0.1:{free_port()}",
        "DOCKYARD_LOGS_LISTEN": f"127.0.0.1:{free_port()}",
        "DOCKYARD_DEMO_UP_ARGS": f"--nats-port {nats_port} --postgres-port {free_port()}",
        "XDG_CONFIG_HOME": str(base / "config"),
    }
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo")],
            env=env, capture_output=True, text=True, timeout=540, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + (base / "data" / "up.log").read_text()
        lines = result.stdout.splitlines()
        assert lines[1:] == [f"step {i}" for i in range(1, 6)] + ["done"]
        assert "succeeded" in result.stderr
        assert "Dockyard is up" in result.stderr
        up_log = (base / "data" / "up.log").read_text()
        assert "nats         | stopped" in up_log
        # It shows the dev token: for the user's eyes only. No password is in it.
        assert stat.S_IMODE((base / "data" / "up.log").stat().st_mode) == 0o600
        for password in (base / "data" / "credentials").glob("postgres-*.password"):
            assert password.read_text().strip() not in up_log + result.stderr + result.stdout
        with socket.socket() as sock:  # the embedded NATS is gone with the stack
            assert sock.connect_ex(("127.0.0.1", nats_port)) != 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
