"""compose.yaml's PostgreSQL (security review F11): every connection needs the password the
operator sets, the services refuse the placeholder, and orchestrators cannot reach it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard import config
from tests.unit.test_deploy_files import read_env_file

ROOT = Path(__file__).resolve().parents[2]
ENV_DIR = ROOT / "deploy" / "env"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_postgres_asks_every_connection_for_a_password() -> None:
    env = read_env_file(ENV_DIR / "postgres.env")
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert set(env["POSTGRES_INITDB_ARGS"].split()) == {
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
    }
    # No `trust` method anywhere (an auth option, pg_hba, initdb's -A); trust/ is a directory.
    text = (ROOT / "compose.yaml").read_text()
    assert not re.search(r"(auth[\w-]*\s*[=:]\s*|-A\s*|\s)trust\b(?!/)", text)


def test_the_services_refuse_the_deploy_files_placeholders() -> None:
    with pytest.raises(config.ConfigError, match="CHANGE-ME"):
        config.load(read_env_file(ENV_DIR / "dockyard.env"))


def test_compose_orchestrators_are_not_on_postgres_network() -> None:
    services = compose()["services"]
    postgres = set(services["postgres"]["networks"])
    orchestrators = [name for name in services if name.startswith("orchestrator-")]
    assert orchestrators
    for name in orchestrators:
        # In the host's namespace (for the egress rules): no compose network at all, and
        # PostgreSQL's port on the host's loopback asks for a password they do not have.
        assert "networks" not in services[name] and services[name]["network_mode"] == "host"
        assert services[name]["cap_add"] == ["NET_ADMIN"], name
    for name in ("migrate", "scheduler", "log-relay", "janitor"):
        assert postgres <= set(services[name]["networks"]), name
        assert set(services["nats"]["networks"]) <= set(services[name]["networks"]), name
    # The credentials service needs no network at all.
    assert services["credentials"]["network_mode"] == "none"
    assert set(compose()["networks"]) == {
        n for service in services.values() for n in service.get("networks", [])
    }
