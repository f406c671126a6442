"""The `dockyard` client commands without a stack: their errors, the spec they build, the exit
codes a follower ends with, and where `up` keeps PostgreSQL's data and the dev token."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from dockyard.cli.jobs import build_spec
from dockyard.cli.main import cli
from dockyard.client import JobEnd, exit_code_for, load_target
from dockyard.stack.layout import SYSTEM_PG_ROOT, Layout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "args",
    [["ls"], ["status", "x"], ["submit", "--", "true"], ["schedules"], ["logs", "x"]],
)
def test_unreachable_api_is_one_line_and_exit_1(args: list[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"DOCKYARD_API_URL": url, "DOCKYARD_LOGS_URL": url, "DOCKYARD_TOKEN": "t"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "cannot reach" in result.output
    assert "dockyard up" in result.output


def test_submit_options_become_a_spec() -> None:
    spec = build_spec(
        image="img", command=("sh", "-c", "echo hi"), timeout=5, cpus=0.5, memory=64,
        retries=2, env=("A=1", "B=x=y"), queue="gpu",
    )  # fmt: skip
    assert spec == {
        "image": "img",
        "command": ["sh", "-c", "echo hi"],
        "env": {"A": "1", "B": "x=y"},
        "timeout_s": 5,
        "resources": {"cpus": 0.5, "memory_mb": 64},
        "retry": {"max_attempts": 3},
        "queue": "gpu",
    }
    bare = build_spec(image="i", command=(), timeout=None, cpus=None, memory=None,
                      retries=None, env=(), queue=None)  # fmt: skip
    assert bare == {"image": "i"}


def test_bad_env_pair_and_schedule_without_when_fail_cleanly() -> None:
    result = CliRunner().invoke(cli, ["submit", "--env", "NOEQUALS", "--", "true"])
    assert result.exit_code == 1
    assert "KEY=VALUE" in result.output
    result = CliRunner().invoke(cli, ["schedules", "create", "n", "--", "true"])
    assert result.exit_code == 1
    assert "--cron" in result.output


@pytest.mark.parametrize(
    ("status", "exit_code", "expected"),
    [
        ("succeeded", 0, 0),
        ("failed", 3, 3),
        ("failed", None, 1),
        ("failed", 137, 137),
        ("timed_out", 143, 124),
        ("cancelled", 143, 130),
    ],
)
def test_follow_exit_codes(status: str, exit_code: int | None, expected: int) -> None:
    assert exit_code_for(JobEnd(status=status, exit_code=exit_code, reason=None)) == expected


def test_the_dev_token_is_found_without_dockyard_token(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    (tmp_path / "dockyard").mkdir()
    (tmp_path / "dockyard" / "token").write_text("secret\n")
    assert load_target(env).token == "secret"
    assert load_target({**env, "DOCKYARD_TOKEN": "mine"}).token == "mine"


def test_up_reuses_its_dev_token_and_honours_dockyard_tokens(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    tokens, token = layout.tokens(env)
    assert tokens == f"admin:{token}"
    written = layout.write_token(token, env)
    assert len(written) == 2
    assert layout.tokens(env) == (tokens, token)  # a restart keeps the CLI's token valid
    assert os.stat(written[0]).st_mode & 0o077 == 0
    assert layout.tokens({"DOCKYARD_TOKENS": "acme:a1,admin:z9"}) == ("acme:a1,admin:z9", "z9")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_up_puts_postgres_elsewhere_when_its_user_cannot_reach_the_data_dir(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o700)  # like /root: PostgreSQL's own user cannot enter
    layout = Layout(tmp_path / "data")
    place = layout.postgres_dir()
    try:
        assert place.parent.parent == SYSTEM_PG_ROOT
        assert layout.postgres_dir() == place  # the same data dir, the same place
        assert (tmp_path / "data" / "postgres-location").read_text().strip() == str(place)
    finally:
        shutil.rmtree(place.parent, ignore_errors=True)


def test_up_keeps_postgres_in_the_data_dir_when_reachable() -> None:
    base = Path(tempfile.mkdtemp(prefix="dockyard-layout-"))
    try:
        base.chmod(0o755)
        assert Layout(base / "data").postgres_dir() == base / "data" / "postgres"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_up_without_a_docker_engine_says_how_to_start_one(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path / "d")], env=env)
    assert result.exit_code == 1
    assert "no Docker engine answers" in result.output
    assert "systemctl start docker" in result.output


def test_up_refuses_a_taken_nats_port_before_starting_anything(
    tmp_path: Path, docker: object
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["up", "--data-dir", str(tmp_path / "d"), "--nats-port", port]
        result = CliRunner().invoke(cli, args, env={"DOCKYARD_NATS_URL": ""})
    assert result.exit_code == 1
    assert f"port {port} is taken" in result.output
    assert "DOCKYARD_NATS_URL" in result.output
