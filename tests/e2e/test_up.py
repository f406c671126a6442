"""`dockyard up` end to end, driven only through the `dockyard` command: the stack on free
ports with a fresh data dir, jobs submitted and followed (exit codes 0, 3, 124, 130), the
client commands, Ctrl-C stopping every child, a restart that finds the earlier jobs, and a
service that dies taking the stack down loudly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.timeout(300)

DEMO = 'for i in 1 2 3 4 5; do echo "step $i"; sleep 0.3; done; echo done'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Up:
    """One `dockyard up` process and the environment its CLI clients need."""

    def __init__(self, data_dir: Path, config_home: Path) -> None:
        self.data_dir = data_dir
        api, logs = free_port(), free_port()
        self.ports = ["--nats-port", str(free_port()), "--postgres-port", str(free_port())]
        self.env = {
            **os.environ,
            "DOCKYARD_API_LISTEN": f"127.0.0.1:{api}",
            "DOCKYARD_LOGS_LISTEN": f"127.0.0.1:{logs}",
            "DOCKYARD_API_URL": f"http://127.0.0.1:{api}",
            "DOCKYARD_LOGS_URL": f"http://127.0.0.1:{logs}",
            "XDG_CONFIG_HOME": str(config_home),
        }
        for name in ("DOCKYARD_TOKEN", "DOCKYARD_TOKENS", "DOCKYARD_NATS_URL",
                     "DOCKYARD_DATABASE_URL"):  # fmt: skip
            self.env.pop(name, None)
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._reader = threading.Thread()

    def start(self) -> None:
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli", "up", "--data-dir", str(self.data_dir),
             *self.ports],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not any(line.startswith("Stop: Ctrl-C") for line in self.output):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(timeout=5)
                pytest.fail("dockyard up did not come up:\n" + "".join(self.output))
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
        self.proc.stdout.close()

    def child_pids(self) -> dict[str, int]:
        pids = {}
        for line in self.output:
            if match := re.match(r"(\S+)\s+\| started \(pid (\d+)\)", line):
                pids[match[1]] = int(match[2])
        return pids

    def finish(self, sig: signal.Signals | None = signal.SIGINT, within: float = 60) -> int:
        assert self.proc is not None
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=within)
        self._reader.join(timeout=10)
        return code

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dockyard.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; it is reaped by its parent (`up`) when that exits.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


@pytest.fixture(scope="module")
def stack(busybox_image: str) -> Iterator[Up]:
    # Not under pytest's tmp dir: as root that is 0700, and PostgreSQL's own user must enter it.
    base = Path(tempfile.mkdtemp(prefix="dockyard-up-"))
    base.chmod(0o755)
    up = Up(base / "data", base / "config")
    up.start()
    try:
        yield up
    finally:
        if up.proc is not None and up.proc.poll() is None:
            up.finish(signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)


def test_up_prints_urls_and_a_dev_token_the_cli_finds(stack: Up) -> None:
    text = "".join(stack.output)
    assert stack.env["DOCKYARD_API_URL"] in text
    assert stack.env["DOCKYARD_LOGS_URL"] in text
    token = (stack.data_dir / "token").read_text().strip()
    assert token in text
    assert (Path(stack.env["XDG_CONFIG_HOME"]) / "dockyard" / "token").read_text().strip() == token
    assert set(stack.child_pids()) == {"scheduler", "orchestrator", "log-relay", "janitor"}


def test_up_postgres_needs_its_password_which_is_never_printed(stack: Up) -> None:
    credentials = stack.data_dir / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in credentials.iterdir()} == {0o600}
    superuser = (credentials / "postgres-superuser.password").read_text().strip()
    app = (credentials / "postgres-app.password").read_text().strip()
    port = int(stack.ports[stack.ports.index("--postgres-port") + 1])

    async def check() -> None:
        for user, password in (("dockyard", None), ("dockyard", "guess"), ("dockyard_app", None)):
            auth = f"{user}:{password}" if password else user
            with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
                await asyncpg.connect(f"postgresql://{auth}@127.0.0.1:{port}/dockyard")
        conn = await asyncpg.connect(f"postgresql://dockyard_app:{app}@127.0.0.1:{port}/dockyard")
        try:
            query = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            assert await conn.fetchval(query) is False
        finally:
            await conn.close()

    asyncio.run(check())
    printed = "".join(stack.output)
    logs = [p for p in stack.data_dir.rglob("*") if p.is_file() and credentials not in p.parents]
    for secret in (superuser, app):
        assert secret not in printed
        for path in logs:
            assert secret.encode() not in path.read_bytes(), path


def test_up_gives_each_service_only_the_credentials_it_uses(stack: Up) -> None:
    app = (stack.data_dir / "credentials" / "postgres-app.password").read_text().strip()
    environments = {}
    for name, pid in stack.child_pids().items():
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        environments[name] = dict(item.decode().partition("=")[::2] for item in raw if item)
    orchestrator = environments.pop("orchestrator")
    assert "DOCKYARD_DATABASE_URL" not in orchestrator
    assert "DOCKYARD_TOKENS" not in orchestrator
    for name, env in environments.items():
        assert env["DOCKYARD_DATABASE_URL"].startswith(f"postgresql://dockyard_app:{app}@"), name
    assert "DOCKYARD_TOKENS" not in environments["janitor"]
    # The secrets key: the scheduler seals, the orchestrator opens; nobody else has it.
    key = str(stack.data_dir / "credentials" / "secrets.key")
    assert orchestrator["DOCKYARD_SECRETS_KEY"] == key
    assert environments["scheduler"]["DOCKYARD_SECRETS_KEY"] == key
    assert "DOCKYARD_SECRETS_KEY" not in environments["log-relay"]
    assert "DOCKYARD_SECRETS_KEY" not in environments["janitor"]


def test_the_cli_ignores_a_token_planted_in_the_current_directory(stack: Up) -> None:
    token = (stack.data_dir / "token").read_text().strip()
    with tempfile.TemporaryDirectory() as shared:
        (Path(shared) / ".dockyard").mkdir()
        (Path(shared) / ".dockyard" / "token").write_text(token + "\n")
        env = {**stack.env, "XDG_CONFIG_HOME": str(Path(shared) / "nobody's-config")}
        result = subprocess.run(
            [sys.executable, "-m", "dockyard.cli", "ls"],
            env=env, cwd=shared, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "token" in result.stderr
    assert token not in result.stderr


def test_submit_follow_streams_the_log_and_exits_zero(stack: Up) -> None:
    result = stack.cli("submit", "--follow", "--", "sh", "-c", DEMO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36}", lines[0])
    assert lines[1:] == [f"step {i}" for i in range(1, 6)] + ["done"]
    assert "succeeded" in result.stderr


def test_submit_follow_exits_with_the_jobs_exit_code(stack: Up) -> None:
    result = stack.cli(
        "submit", "-f", "--env", "CODE=3", "--", "sh", "-c", "echo bad >&2; exit $CODE"
    )
    assert result.returncode == 3
    assert "bad" in result.stderr


def test_submit_follow_exits_124_when_timed_out(stack: Up) -> None:
    result = stack.cli("submit", "--timeout", "1", "--follow", "--", "sleep", "30")
    assert result.returncode == 124, result.stderr
    assert "timed_out" in result.stderr


def test_logs_follow_exits_130_when_cancelled(stack: Up) -> None:
    job_id = stack.cli("submit", "--", "sh", "-c", "echo started; sleep 60").stdout.strip()
    with subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli", "logs", "-f", job_id],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as follower:  # fmt: skip
        assert follower.stdout is not None
        assert follower.stdout.readline().strip() == "started"  # running: its log is live
        cancel = stack.cli("cancel", job_id)
        assert cancel.returncode == 0, cancel.stderr
        assert follower.wait(timeout=60) == 130
    status = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert status["status"] == "cancelled"


def test_status_ls_events_and_logs(stack: Up) -> None:
    job_id = stack.cli("submit", "--follow", "--", "echo", "hello").stdout.splitlines()[0]
    status = stack.cli("status", job_id)
    assert status.returncode == 0
    assert "succeeded" in status.stdout
    listing = stack.cli("ls")
    assert job_id in listing.stdout
    assert listing.stdout.splitlines()[0].split()[:2] == ["ID", "STATUS"]
    page = json.loads(stack.cli("ls", "--json", "--status", "succeeded").stdout)
    assert job_id in [job["id"] for job in page["jobs"]]
    events = json.loads(stack.cli("events", job_id, "--json").stdout)["events"]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert stack.cli("events", job_id).stdout.splitlines()[0].split()[2] == "job_submitted"
    assert stack.cli("logs", job_id).stdout == "hello\n"
    assert stack.cli("logs", job_id, "--after", "1").stdout == ""


def test_status_shows_what_the_job_used_in_words_and_as_it_is_in_json(stack: Up) -> None:
    script = "head -c 20m /dev/zero > /tmp/held; sleep 2.5"  # read at least twice while it runs
    job_id = stack.cli("submit", "--follow", "--", "sh", "-c", script).stdout.splitlines()[0]
    words = stack.cli("status", job_id).stdout
    assert re.search(
        r"usage: +CPU [0-9.]+ s · peak [0-9.]+ MiB of 512 · [0-9]+ of 256 processes", words
    )
    view = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert set(view["usage"]) == {
        "cpu_s", "memory_peak_mb", "pids_peak", "io_read_mb", "io_write_mb", "cpu_throttled_s",
    }  # fmt: skip
    assert view["usage"]["memory_peak_mb"] >= 20 and view["limits_hit"] == []


def test_schedules_create_list_delete(stack: Up) -> None:
    created = stack.cli("schedules", "create", "nightly", "--cron", "0 3 * * *", "--", "echo", "hi")
    assert created.returncode == 0, created.stderr
    listing = stack.cli("schedules")
    assert "nightly" in listing.stdout
    assert "0 3 * * *" in listing.stdout
    again = stack.cli("schedules", "create", "nightly", "--interval", "60", "--", "true")
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert stack.cli("schedules", "delete", "nightly").returncode == 0
    assert "nightly" not in stack.cli("schedules", "ls").stdout


def test_errors_are_one_line_without_traceback(stack: Up) -> None:
    for args, words in [
        (["status", "no-such-job"], "no-such-job"),
        (["cancel", "no-such-job"], "no-such-job"),
        (["submit", "--memory", "0", "--", "true"], "--memory"),
        (["submit", "--cpus", "-1", "--", "true"], "--cpus"),
    ]:
        result = stack.cli(*args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr
        assert words in result.stderr, result.stderr
    bad_token = stack.cli("ls", "--json")
    assert bad_token.returncode == 0
    env_backup = stack.env
    stack.env = {**env_backup, "DOCKYARD_TOKEN": "wrong"}
    try:
        result = stack.cli("ls")
    finally:
        stack.env = env_backup
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "token" in result.stderr


def test_up_signs_claim_answers_and_its_orchestrator_runs_only_signed_ones(stack: Up) -> None:
    """The claim key is made at the first start: no service runs unprotected claims."""
    text = "".join(stack.output)
    assert "claim answers are signed" in text
    assert "claims_unsigned" not in text and "claims_unverified" not in text
    credentials = stack.data_dir / "credentials"
    assert (credentials / "claim.seed").stat().st_mode & 0o777 == 0o600
    assert (credentials / "claim.pub").read_text().startswith("N")
    result = stack.cli("submit", "--follow", "--", "sh", "-c", "echo signed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["signed"]


def test_up_seals_secrets_nowhere_at_rest_or_in_a_log_but_in_the_container(stack: Up) -> None:
    """A job's and a schedule's secret: the container gets it (the job prints its hash, so no
    log could hold it), and no byte of the NATS store, the PostgreSQL data directory or any
    service's output does, in plain text or in base64."""
    credentials = stack.data_dir / "credentials"
    assert stat.S_IMODE((credentials / "secrets.key").stat().st_mode) == 0o600
    assert "secrets are sealed" in "".join(stack.output)
    assert "secrets_refused" not in "".join(stack.output)
    value, scheduled = f"job-{secrets.token_hex(12)}", f"schedule-{secrets.token_hex(12)}"
    check = 'printf %s "$TOKEN" | sha256sum'
    result = stack.cli("submit", "-f", "--secret", f"TOKEN={value}", "--", "sh", "-c", check)
    assert result.returncode == 0, result.stderr
    job_id, printed = result.stdout.splitlines()
    assert printed.split()[0] == hashlib.sha256(value.encode()).hexdigest()
    created = stack.cli(
        "schedules", "create", "sealed", "--interval", "1", "--secret", f"TOKEN={scheduled}",
        "--", "sh", "-c", check,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    fired = _fired_job(stack, "sealed")
    assert stack.cli("schedules", "delete", "sealed").returncode == 0
    assert (
        stack.cli("logs", fired).stdout.split()[0] == hashlib.sha256(scheduled.encode()).hexdigest()
    )
    shown = stack.cli("events", job_id, "--json").stdout
    assert '"TOKEN": "***"' in shown or '"TOKEN":"***"' in shown

    forms = [v.encode() for v in (value, scheduled)]
    forms += [base64.b64encode(v.encode()).rstrip(b"=") for v in (value, scheduled)]
    output = "".join(stack.output).encode()
    assert [f for f in forms if f in output] == []
    files = [p for p in stack.data_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("jetstream" in str(p) for p in files) and any("pg_wal" in str(p) for p in files)
    found = [(str(p), f) for p in files for f in forms if f in p.read_bytes()]
    assert found == []


def _fired_job(stack: Up, schedule: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = json.loads(stack.cli("ls", "--json", "--status", "succeeded").stdout)
        for job in page["jobs"]:
            if job["spec"]["labels"].get("schedule") == schedule:
                return str(job["id"])
        time.sleep(0.5)
    pytest.fail(f"schedule {schedule} made no job that succeeded")


def test_up_stops_on_sigint_resumes_and_a_dead_service_stops_it(stack: Up) -> None:
    queued = stack.cli("submit", "--queue", "nobody-serves-this", "--", "true").stdout.strip()
    pids = stack.child_pids()
    assert stack.finish(signal.SIGINT) == 0, "".join(stack.output)
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert "Traceback" not in "".join(stack.output), "a clean stop printed a traceback"

    stack.start()
    status = json.loads(stack.cli("status", queued, "--json").stdout)
    assert status["status"] == "queued"  # still there after a restart, still waiting

    os.kill(stack.child_pids()["log-relay"], signal.SIGKILL)
    assert stack.finish(sig=None) == 1
    assert "EXITED" in "".join(stack.output)
    assert not [name for name, pid in stack.child_pids().items() if alive(pid)]
