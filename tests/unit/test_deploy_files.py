"""The deploy files (compose.yaml, deploy/) agree with each other and with the code.

Neither `docker compose` nor an image build is available to the test suite, so compose.yaml is
read as YAML and checked for what compose and the services need; the Dockerfile is read as
text. The NATS configurations are read with tests/support/nats_conf.py, checked by nats-server
itself (`-t`), and the three-node cluster is started for real and keeps a stream at three
replicas. The systemd unit goes through `systemd-analyze verify` where that is installed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import nats
import nats.errors
import nats.js.errors
import pytest
import yaml
from nats.js.api import StorageType, StreamConfig

from dockyard.bus.topology import MAX_MSG_BYTES
from dockyard.embedded import nats_server_binary
from dockyard.orchestrator.config import DRAIN_S, STOP_GRACE_S
from dockyard.stack.deployment_credentials import (
    MOUNT,
    DeploymentCredentials,
    Layout,
    cluster_certificates,
)
from tests.support.nats_conf import Config, NatsConfError, Value, dumps, loads

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
ENV_DIR = DEPLOY / "env"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
SYSTEMD_UNIT = DEPLOY / "systemd" / "dockyard-orchestrator.service"
SINGLE_NATS = DEPLOY / "nats.conf"
SECURED_NATS = DEPLOY / "nats" / "secured.conf"
CLUSTER_DIR = DEPLOY / "nats" / "cluster"
CLUSTER_CONFS = tuple(CLUSTER_DIR / f"nats-{n}.conf" for n in (1, 2, 3))
CLUSTER_COMPOSE = CLUSTER_DIR / "compose.yaml"

IMAGE = "dockyard:local"
SOCKET = "/var/run/docker.sock"
# The dockyard subcommand each service of compose.yaml runs.
COMMANDS = {
    "migrate": "db migrate",
    "scheduler": "scheduler",
    "log-relay": "log-relay",
    "janitor": "janitor",
    "orchestrator-1": "orchestrator",
    "orchestrator-2": "orchestrator",
}
ORCHESTRATORS = ("orchestrator-1", "orchestrator-2")
ONE_SHOTS = frozenset({"credentials", "migrate"})
# Where compose keeps what `dockyard credentials init` made; each service mounts its own part.
CREDENTIALS = "./deploy/credentials"
# The services that talk to their host's Docker engine: the orchestrator runs jobs on it, the
# janitor removes what jobs left on it. Nothing else may hold the socket (it is root on the host).
ENGINE_USERS = frozenset({*ORCHESTRATORS, "janitor"})

# Variables the deploy files set that the code does not read yet: issue #7 adds them (the
# orchestrator's /metrics, the streams' replica count). Once the code names them they are
# found by `known_variables` anyway, and they can leave this set.
VARIABLE = re.compile(r"\bDOCKYARD_[A-Z0-9_]*[A-Z0-9]\b")


# --- reading the files ------------------------------------------------------------------------


@functools.cache
def known_variables() -> frozenset[str]:
    """Every `"DOCKYARD_..."` string literal in the code: what some part of it reads."""
    names: set[str] = set()
    for folder in (ROOT / "shared", ROOT / "services"):
        for path in folder.rglob("*.py"):
            names.update(re.findall(r"[\"'](DOCKYARD_[A-Z0-9_]+)[\"']", path.read_text()))
    return frozenset(names)


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path}: not a mapping"
    return document


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def services(document: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    found = (document or compose())["services"]
    assert isinstance(found, dict)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose's env_file and systemd's EnvironmentFile both read them."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        where = f"{path.name}:{number}"
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{where}: not KEY=VALUE"
        # The two readers differ on quotes and on comments after a value: allow neither.
        assert not value.startswith(("'", '"')), f"{where}: quoted value"
        assert " #" not in value, f"{where}: a comment after the value"
        values[key] = value
    return values


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def service_env(name: str) -> dict[str, str]:
    """A service's environment: its env files in order, then `environment:` over them."""
    service = services()[name]
    env: dict[str, str] = {}
    for file in as_list(service.get("env_file")):
        env.update(read_env_file(ROOT / file))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    env.update({str(k): str(v) for k, v in environment.items()})
    return env


def command_line(service: Mapping[str, Any]) -> str:
    """What the container runs: the image's ENTRYPOINT (dockyard) unless overridden, + command."""
    entrypoint = as_list(service.get("entrypoint")) or ["dockyard"]
    return " ".join(str(part) for part in [*entrypoint, *as_list(service.get("command"))])


def seconds(duration: str) -> float:
    """A compose/systemd duration such as 60s, 1m30s or 90."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s|)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def deploy_texts() -> dict[Path, str]:
    """compose.yaml and every text file under deploy/."""
    paths = [COMPOSE, *(p for p in DEPLOY.rglob("*") if p.is_file())]
    return {path: path.read_text() for path in paths}


def block(config: Mapping[str, Value], key: str) -> Config:
    value = config.get(key)
    assert isinstance(value, dict), f"{key}: not a block"
    return value


def text(config: Mapping[str, Value], key: str) -> str:
    value = config.get(key)
    assert isinstance(value, str), f"{key}: not a string"
    return value


def jetstream(config: Mapping[str, Value]) -> Config:
    """The jetstream block; `jetstream: enabled` or `true` also switch it on, with defaults."""
    value = config.get("jetstream")
    assert value not in (None, False, "disabled"), "JetStream is not enabled"
    return value if isinstance(value, dict) else {}


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"x://{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


# --- compose.yaml -----------------------------------------------------------------------------


def test_compose_depends_on_names_existing_services_with_valid_conditions() -> None:
    names = set(services())
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in names, f"{name} depends on unknown {target}"
            condition = spec.get("condition", "service_started")
            assert condition in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            ), f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert services()[target].get("healthcheck"), f"{target} has no health check"
            if condition == "service_completed_successfully":
                # A one-shot: restarted on exit it would never count as completed.
                assert services()[target].get("restart", "no") == "no", target


def test_compose_builds_the_dockyard_image_once_and_every_service_uses_it() -> None:
    builders = {name: s for name, s in services().items() if "build" in s}
    assert list(builders) == ["credentials"]  # the first to run
    build = builders["credentials"]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name in [*COMMANDS, "credentials"]:
        assert services()[name]["image"] == IMAGE, name
    for name, service in services().items():
        image = str(service["image"])
        # Pinned: every `up` on every machine runs the same servers. (Ours is built locally.)
        assert re.search(r":[\w][\w.-]*$|@sha256:", image) and not image.endswith(":latest"), name


def test_compose_services_run_their_dockyard_command() -> None:
    for name, subcommand in COMMANDS.items():
        assert re.search(rf"\bdockyard {subcommand}$", command_line(services()[name])), name
    init = command_line(services()["credentials"])
    assert init == f"dockyard credentials init /credentials --orchestrators {len(ORCHESTRATORS)}"


def test_compose_control_plane_waits_for_servers_and_migrations() -> None:
    for name in ("scheduler", "log-relay", "janitor"):
        depends = services()[name]["depends_on"]
        assert depends["nats"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["credentials"]["condition"] == "service_completed_successfully", name
    # Orchestrators need NATS only (and their credentials): they never touch the database.
    for name in ORCHESTRATORS:
        assert set(services()[name]["depends_on"]) == {"credentials", "nats"}


def test_compose_long_running_services_restart_and_have_health_checks() -> None:
    for name, service in services().items():
        if name not in ONE_SHOTS:
            assert service.get("restart") == "unless-stopped", name
    for name in ("nats", "postgres", "scheduler", "log-relay", "janitor"):
        test = services()[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_compose_http_health_checks_ask_the_ports_the_services_listen_on() -> None:
    listens = {
        "scheduler": service_env("scheduler")["DOCKYARD_API_LISTEN"],
        "log-relay": service_env("log-relay")["DOCKYARD_LOGS_LISTEN"],
        "janitor": service_env("janitor")["DOCKYARD_JANITOR_METRICS_LISTEN"],
    }
    for name, listen in listens.items():
        test = services()[name]["healthcheck"]["test"]
        # The image has no curl: a Python one-liner, which must at least compile.
        assert test[:3] == ["CMD", "python", "-c"], name
        compile(test[3], f"{name} health check", "exec")
        path = "/healthz" if name == "janitor" else "/readyz"
        assert f"http://127.0.0.1:{port(listen)}{path}" in test[3], name


def test_compose_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(compose().get("volumes") or {})
    used: set[str] = set()
    for name, service in services().items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source == CREDENTIALS or source.startswith(f"{CREDENTIALS}/"):
                continue  # made by the credentials service, checked below
            if source.startswith(("/", ".")):
                assert source == SOCKET or (ROOT / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared


def test_compose_ports_are_published_on_loopback_only() -> None:
    for document in (compose(), load_yaml(CLUSTER_COMPOSE)):
        for name, service in services(document).items():
            for mapping in service.get("ports") or []:
                assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping}"


def test_compose_published_ports_are_the_listen_ports() -> None:
    # The web page tells browsers the log relay's URL from the page's host and the relay's
    # *listen* port, so host and container ports must be the same.
    expected = {
        "scheduler": port(service_env("scheduler")["DOCKYARD_API_LISTEN"]),
        "log-relay": port(service_env("log-relay")["DOCKYARD_LOGS_LISTEN"]),
    }
    for name, listen_port in expected.items():
        assert services()[name]["ports"] == [f"127.0.0.1:{listen_port}:{listen_port}"], name
    origins = service_env("log-relay")["DOCKYARD_ALLOWED_ORIGINS"].split(",")
    assert f"http://localhost:{expected['scheduler']}" in origins


def test_services_listen_on_every_interface_inside_their_containers() -> None:
    # Loopback inside a container is reachable from nowhere; the published ports decide.
    listens = {
        "scheduler": "DOCKYARD_API_LISTEN",
        "log-relay": "DOCKYARD_LOGS_LISTEN",
        "janitor": "DOCKYARD_JANITOR_METRICS_LISTEN",
    }
    for name, variable in listens.items():
        assert service_env(name)[variable].startswith("0.0.0.0:"), name
    # The orchestrators are in the host's namespace: there 0.0.0.0 would be every network
    # the host is on, so /metrics is on its loopback, a port each.
    metrics = [service_env(name)["DOCKYARD_METRICS_LISTEN"] for name in ORCHESTRATORS]
    assert all(listen.startswith("127.0.0.1:") for listen in metrics)
    assert len(set(metrics)) == len(metrics)


def test_compose_only_the_engine_users_mount_the_docker_socket() -> None:
    for name, service in services().items():
        mounts = [v for v in service.get("volumes") or [] if v.split(":")[0] == SOCKET]
        if name in ENGINE_USERS:
            assert mounts == [f"{SOCKET}:{SOCKET}"], name
        else:
            assert not mounts, f"{name} must not reach the Docker engine"
            assert not any("docker.sock" in str(v) for v in service.get("volumes") or [])


def test_compose_urls_name_compose_services_and_their_ports() -> None:
    env = service_env("scheduler")
    assert host_port(env["DOCKYARD_NATS_URL"]) == ("nats", 4222)
    # Orchestrators, on the host's network, reach NATS where compose publishes it.
    published = {mapping.rsplit(":", 1)[1] for mapping in services()["nats"]["ports"]}
    for name in ORCHESTRATORS:
        assert services()[name]["network_mode"] == "host", name
        assert host_port(service_env(name)["DOCKYARD_NATS_URL"]) == ("localhost", 4222)
        assert "4222" in published
    database = urlsplit(env["DOCKYARD_DATABASE_URL"])
    assert (database.hostname, database.port) == ("postgres", 5432)
    postgres = service_env("postgres")
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"


def test_compose_nats_runs_deploy_nats_conf_with_auth_and_tls() -> None:
    nats_service = services()["nats"]
    command = nats_service["command"]
    config_path = PurePosixPath(command[command.index("--config") + 1])
    assert f"./deploy/nats/secured.conf:{config_path}:ro" in nats_service["volumes"]
    # secured.conf includes nats.conf and the credentials' files, by paths relative to itself.
    includes = re.findall(r'^include "([^"]+)"', SECURED_NATS.read_text(), re.MULTILINE)
    assert includes == ["nats.conf", "credentials/auth.conf", "credentials/tls.conf"]
    etc = config_path.parent
    assert f"./deploy/nats.conf:{etc / 'nats.conf'}:ro" in nats_service["volumes"]
    assert f"{CREDENTIALS}/nats:{etc / 'credentials'}:ro" in nats_service["volumes"]
    store_dir = text(jetstream(loads(SINGLE_NATS.read_text())), "store_dir")
    assert f"nats-data:{store_dir}" in nats_service["volumes"]


def test_compose_orchestrators_each_have_a_stable_id_and_the_identity_named_by_it() -> None:
    ids = [service_env(name)["DOCKYARD_ORCHESTRATOR_ID"] for name in ORCHESTRATORS]
    assert ids == [f"compose-{n}" for n in range(1, len(ORCHESTRATORS) + 1)]
    for name, orchestrator_id in zip(ORCHESTRATORS, ids, strict=True):
        env = service_env(name)
        assert env["DOCKYARD_NATS_CREDS"] == f"{MOUNT}/orchestrator-{orchestrator_id}.creds"
        mount = f"{CREDENTIALS}/orchestrator-{orchestrator_id}:{MOUNT}:ro"
        assert mount in services()[name]["volumes"], name
        assert "ports" not in services()[name]  # /metrics on the compose network only


def test_compose_orchestrator_has_an_env_without_database_or_tokens() -> None:
    for name in ORCHESTRATORS:
        env = service_env(name)
        assert "DOCKYARD_DATABASE_URL" not in env and "DOCKYARD_TOKENS" not in env
        # The lease is the heartbeat bucket's TTL, which every service sets: one value for all.
        assert env["DOCKYARD_LEASE_S"] == service_env("scheduler")["DOCKYARD_LEASE_S"]


def test_compose_services_read_credentials_the_init_makes_in_their_own_directory(
    tmp_path: Path,
) -> None:
    made = tmp_path / "credentials"
    DeploymentCredentials(made, Layout(orchestrators=len(ORCHESTRATORS))).ensure()
    assert (services()["credentials"]["volumes"]) == [f"{CREDENTIALS}:/credentials"]
    for name, service in services().items():
        if name == "credentials":
            continue
        own = [v for v in service.get("volumes") or [] if v.startswith(f"{CREDENTIALS}/")]
        if name == "nats":
            continue  # its own test
        assert len(own) == 1 and own[0].endswith(f":{MOUNT}:ro"), f"{name}: {own}"
        directory = made / own[0].split(":")[0].removeprefix(f"{CREDENTIALS}/")
        assert directory.is_dir(), f"{name}: the init makes no {directory.name}/"
        env = service_env(name) if name != "postgres" else {}
        paths = [value for value in env.values() if value.startswith(f"{MOUNT}/")]
        paths += re.findall(rf"{MOUNT}/[\w.-]+", json.dumps(service.get("command")))
        paths += re.findall(rf"sslrootcert=({MOUNT}/[\w.-]+)", env.get("DOCKYARD_DATABASE_URL", ""))
        for path in paths:
            assert (directory / path.removeprefix(f"{MOUNT}/")).is_file(), f"{name}: {path}"
    # Who talks to NATS proves who it is and checks who answers, over TLS.
    for name in ("scheduler", "log-relay", "janitor", *ORCHESTRATORS):
        env = service_env(name)
        assert env["DOCKYARD_NATS_URL"].startswith("tls://"), name
        assert env["DOCKYARD_NATS_CREDS"].startswith(f"{MOUNT}/"), name
        assert env["DOCKYARD_NATS_TLS_CA"] == f"{MOUNT}/ca.pem", name
    database = urlsplit(service_env("scheduler")["DOCKYARD_DATABASE_URL"]).query
    assert "sslmode=verify-full" in database and f"sslrootcert={MOUNT}/ca.pem" in database


def drain_budget_s(env: Mapping[str, str]) -> float:
    """How long an orchestrator may take to stop after SIGTERM, reports aside."""
    return float(env.get("DOCKYARD_DRAIN_S") or DRAIN_S) + STOP_GRACE_S


def test_orchestrator_supervisors_wait_longer_than_the_drain() -> None:
    budget = drain_budget_s(read_env_file(ENV_DIR / "orchestrator.env"))
    # Reports after the stop take a few seconds: ask for 10 s of margin at least.
    for name in ORCHESTRATORS:
        assert seconds(services()[name]["stop_grace_period"]) >= budget + 10
    timeout = systemd_unit()["Service"]["TimeoutStopSec"][-1]
    assert seconds(timeout) >= budget + 10


# --- environment files --------------------------------------------------------------------------


def test_env_files_are_plain_key_value_lines() -> None:
    for path in sorted(ENV_DIR.glob("*.env")):
        assert read_env_file(path), path.name


def test_every_dockyard_variable_in_the_deploy_files_is_read_by_the_code() -> None:
    known = known_variables()
    for path, content in deploy_texts().items():
        unknown = set(VARIABLE.findall(content)) - known
        assert not unknown, f"{path.relative_to(ROOT)}: {sorted(unknown)}"


def test_the_env_examples_document_every_contract_variable() -> None:
    # The contract's variables are the ones dockyard.config and the CLI's target read.
    contract: set[str] = set()
    for module in ("shared/dockyard/config.py", "shared/dockyard/client/target.py"):
        contract.update(re.findall(r"\"(DOCKYARD_[A-Z0-9_]+)\"", (ROOT / module).read_text()))
    assert "DOCKYARD_ORCHESTRATOR_ID" in contract and "DOCKYARD_TOKEN" in contract
    documented = set()
    for path in ENV_DIR.glob("*.env"):
        documented.update(VARIABLE.findall(path.read_text()))
    assert contract <= documented, sorted(contract - documented)


def test_env_example_secrets_are_obvious_placeholders() -> None:
    for name, value in read_env_file(ENV_DIR / "dockyard.env").items():
        if name == "DOCKYARD_TOKENS":
            assert all("CHANGE-ME" in item for item in value.split(","))
    assert "CHANGE-ME" in read_env_file(ENV_DIR / "postgres.env")["POSTGRES_PASSWORD"]


def test_cluster_env_asks_for_three_replicas_from_a_cluster_node() -> None:
    env = read_env_file(ENV_DIR / "cluster.env")
    assert env["DOCKYARD_NATS_REPLICAS"] == str(len(CLUSTER_CONFS))
    names = {text(loads(path.read_text()), "server_name") for path in CLUSTER_CONFS}
    assert host_port(env["DOCKYARD_NATS_URL"]) in {(name, 4222) for name in names}


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def test_dockerfile_bases_are_pinned_and_new_enough() -> None:
    instructions = dockerfile_instructions()
    args: dict[str, str] = {}  # global ARGs: those before the first FROM
    stages: set[str] = set()
    seen_from = False
    for word, rest in instructions:
        if word == "ARG" and "=" in rest and not seen_from:
            name, _, default = rest.partition("=")
            args[name] = default
        if word == "FROM":
            seen_from = True
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], parts[0])
            if image not in stages:
                assert re.search(r":[\w][\w.-]*$|@sha256:", image), f"unpinned base {image}"
                assert not image.endswith(":latest"), image
                # requires-python is >=3.11: the base's Python must satisfy it.
                version = re.match(r"(?:docker\.io/)?(?:library/)?python:3\.(\d+)", image)
                assert version and int(version[1]) >= 11, image
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    assert stages == {"build"}


def test_dockerfile_runs_dockyard_as_a_non_root_user() -> None:
    instructions = dict(dockerfile_instructions())  # the last of each instruction
    user = instructions["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(instructions["ENTRYPOINT"]) == ["dockyard"]
    assert instructions["STOPSIGNAL"] == "SIGTERM"


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the context) stays out of the build context.

    Docker's rules: patterns in order, the last that matches wins, `!` re-includes, a pattern
    matching a folder covers what is inside it, `**` spans any number of folders.
    """
    ignored = False
    parents = PurePosixPath(path)
    candidates = [str(p) for p in [parents, *parents.parents] if str(p) != "."]
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = "".join(
            "(.*/)?" if token == "**/" else "[^/]*" if token == "*" else re.escape(token)
            for token in re.findall(r"\*\*/|\*|[^*]+", pattern)
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerfile_copies_the_sources_of_the_wheel_and_the_context_has_them() -> None:
    copied: list[str] = []
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied.extend(rest.split()[:-1])
    assert {"pyproject.toml", "README.md", "shared", "services", "schemas"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), source
    assert not dockerignored("shared/dockyard/config.py")
    assert not dockerignored("schemas/openapi.json")
    # The package alone: test extras (pytest, playwright, ...) have no place in the image.
    installs = [rest for word, rest in dockerfile_instructions() if word == "RUN"]
    assert any("pip install --no-deps /wheels/dockyard-" in run for run in installs)
    assert not any("[test]" in run for run in installs)
    # Every other install is hash-checked against a lock file (supply chain, issue #20).
    for run in installs:
        for command in re.split(r"&&", run):
            if "pip install" in command and "/wheels/" not in command:
                assert "--require-hashes -r requirements/" in command, command
            if "pip wheel" in command:
                assert "--no-build-isolation" in command, command


def test_dockerignore_keeps_local_state_caches_and_tests_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".dockyard/token",
        ".pytest_cache/v",
        ".mypy_cache/x",
        ".ruff_cache/x",
        ".hypothesis/x",
        "tests/unit/test_deploy_files.py",
        "shared/dockyard/__pycache__/config.cpython-311.pyc",
    ):
        assert dockerignored(path), path


# --- systemd -------------------------------------------------------------------------------------


@functools.cache
def systemd_unit() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (systemd allows repeating a key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in SYSTEMD_UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, line
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_the_orchestrator_after_docker_with_its_env() -> None:
    unit, service = systemd_unit()["Unit"], systemd_unit()["Service"]
    assert {"docker.service", "network-online.target"} <= set(" ".join(unit["After"]).split())
    assert "network-online.target" in unit["Wants"]
    assert unit["Requires"] == ["docker.service"]
    assert service["ExecStart"] == ["/opt/dockyard/venv/bin/dockyard orchestrator"]
    assert service["EnvironmentFile"] == ["/etc/dockyard/orchestrator.env"]
    assert "DOCKYARD_ORCHESTRATOR_ID=%H" in service["Environment"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert systemd_unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_is_sandboxed_but_keeps_the_docker_socket() -> None:
    service = systemd_unit()["Service"]
    assert service["SupplementaryGroups"] == ["docker"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == [value], key
    assert "AF_UNIX" in service["RestrictAddressFamilies"][-1].split()
    # Not root: a user made up at start, or a named one.
    assert service.get("DynamicUser") == ["yes"] or service["User"][-1] not in ("root", "0")
    # The engine's socket lives under /run: it must stay visible.
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):
        assert not any("/run" in value for value in service.get(key, [])), key


@pytest.mark.integration
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants the executable and the environment file to exist: point them at ours. It
    # also loads the units this one requires, looking next to it too: a stand-in docker.service
    # keeps the check independent of how this machine runs its engine.
    (tmp_path / "docker.service").write_text("[Service]\nExecStart=/bin/true\n")
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(
        SYSTEMD_UNIT.read_text()
        .replace("/opt/dockyard/venv/bin/dockyard", str(ROOT / ".venv" / "bin" / "dockyard"))
        .replace("/etc/dockyard/orchestrator.env", str(ENV_DIR / "orchestrator.env"))
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # It exits 0 on unknown keys and bad values too, only saying so: any output is a finding.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- NATS configuration -------------------------------------------------------------------------


def test_nats_conf_reader_reads_the_formats_parts() -> None:
    config = loads(
        """
        # comment
        listen = 0.0.0.0:4222   // a comment too
        server_name "n1"; max_payload: 8MB
        write_deadline: "2s", ping_max 3
        lame: true
        jetstream {
          store_dir: '/data/js'
          sync_interval: always
          max_mem: 1G
        }
        cluster: {
          routes = [nats-route://a:6222, "nats-route://b:6222"
            nats-route://c:6222
          ]
        }
        """
    )
    assert config == {
        "listen": "0.0.0.0:4222",
        "server_name": "n1",
        "max_payload": 8 * 1024 * 1024,
        "write_deadline": "2s",
        "ping_max": 3,
        "lame": True,
        "jetstream": {"store_dir": "/data/js", "sync_interval": "always", "max_mem": 10**9},
        "cluster": {
            "routes": ["nats-route://a:6222", "nats-route://b:6222", "nats-route://c:6222"]
        },
    }
    assert loads(dumps(config)) == config
    for bad in ("jetstream {", "include other.conf", "port: $PORT", "listen:", "a: [1, 2"):
        with pytest.raises(NatsConfError):
            loads(bad)


@pytest.mark.parametrize("path", [SINGLE_NATS, *CLUSTER_CONFS], ids=lambda p: p.name)
def test_nats_configs_keep_acknowledged_writes_and_take_8mb_messages(path: Path) -> None:
    config = loads(path.read_text())
    assert text(jetstream(config), "sync_interval") == "always"
    # The servers' max_payload is what the streams' max_msg_size assumes.
    assert config["max_payload"] == MAX_MSG_BYTES == 8 * 1024 * 1024
    assert loads(dumps(config)) == config


def test_nats_cluster_nodes_route_to_each_other() -> None:
    nodes = [loads(path.read_text()) for path in CLUSTER_CONFS]
    names = [text(node, "server_name") for node in nodes]
    assert len(set(names)) == 3
    assert len({text(block(node, "cluster"), "name") for node in nodes}) == 1
    cluster_ports = {
        name: port(text(block(n, "cluster"), "listen"))
        for name, n in zip(names, nodes, strict=True)
    }
    for name, node in zip(names, nodes, strict=True):
        routes = block(node, "cluster")["routes"]
        assert isinstance(routes, list)
        targets = {host_port(str(route)) for route in routes}
        # Each node names the two others (by the host name each runs as), at their route port.
        assert targets == {(other, cluster_ports[other]) for other in names if other != name}
        assert all(str(route).startswith("nats-route://") for route in routes)
        # Routes are TLS both ways, verified, and carry the route password.
        cluster = block(node, "cluster")
        tls = block(cluster, "tls")
        assert tls["verify"] is True and {"cert_file", "key_file", "ca_file"} <= set(tls)
        assert text(tls, "cert_file") == f"{CERTS_MOUNT}{name}.pem"
        authorization = block(cluster, "authorization")
        for route in routes:
            parts = urlsplit(str(route))
            assert parts.username == authorization["user"], route
            assert parts.password == authorization["password"], route
        assert "CHANGE-ME" in text(authorization, "password")  # an obvious placeholder


def test_nats_cluster_compose_runs_each_node_with_its_own_config_and_volume() -> None:
    document = load_yaml(CLUSTER_COMPOSE)
    names = {text(loads(path.read_text()), "server_name") for path in CLUSTER_CONFS}
    assert set(services(document)) == names
    declared = set(document["volumes"])
    host_ports: list[str] = []
    for name, service in services(document).items():
        volumes = service["volumes"]
        assert f"./{name}.conf:/etc/nats/nats.conf:ro" in volumes
        assert f"./certs:{CERTS_MOUNT.rstrip('/')}:ro" in volumes
        assert f"{name}-data:/data" in volumes and f"{name}-data" in declared
        host_ports += [str(mapping).rsplit(":", 1)[0] for mapping in service["ports"]]
    assert len(host_ports) == len(set(host_ports)), "two nodes publish the same host port"


CERTS_MOUNT = "/etc/nats/certs/"


def with_certs(config_text: str, certs: Path) -> str:
    """A cluster node's config reading its route certificates from `certs` (made by
    `dockyard credentials cluster`) instead of where the deploy files mount them."""
    return config_text.replace(CERTS_MOUNT, f"{certs}/")


@pytest.mark.integration
@pytest.mark.parametrize("path", [SINGLE_NATS, *CLUSTER_CONFS], ids=lambda p: p.name)
def test_nats_server_accepts_the_config(path: Path, tmp_path: Path) -> None:
    # nats-server's own checker: it refuses unknown keys and bad values, which ours would not.
    # It also opens the certificates, so a cluster node's are made where its copy reads them.
    if path in CLUSTER_CONFS:
        cluster_certificates(tmp_path / "certs", ["nats-1", "nats-2", "nats-3"])
        checked = tmp_path / path.name
        checked.write_text(with_certs(path.read_text(), tmp_path / "certs"))
        path = checked
    result = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- the cluster, for real ----------------------------------------------------------------------


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def free_ports(count: int) -> list[int]:
    """Distinct ports free now: held open together so the OS cannot hand one out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_copy(config: Config, node: Node, nodes: Mapping[str, Node], store: Path) -> Config:
    """`config` on loopback at `node`'s ports, storing under `store`, routing to `nodes`."""
    copy: Any = json.loads(json.dumps(config))  # a deep copy; every value is JSON
    copy["listen"] = f"127.0.0.1:{node.client_port}"
    copy["http"] = f"127.0.0.1:{node.http_port}"
    copy["jetstream"]["store_dir"] = str(store)
    cluster = copy["cluster"]
    cluster["listen"] = f"127.0.0.1:{node.cluster_port}"
    cluster["routes"] = [
        urlsplit(route)
        ._replace(
            netloc=f"{urlsplit(route).netloc.rsplit('@', 1)[0]}@127.0.0.1:"
            f"{nodes[host_port(route)[0]].cluster_port}"
        )
        .geturl()
        for route in cluster["routes"]
    ]
    return cast(Config, json.loads(with_certs(json.dumps(copy), store.parent / "certs")))


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[Node]]:
    """The three nodes of deploy/nats/cluster/, changed only in addresses and store dirs."""
    configs = [loads(path.read_text()) for path in CLUSTER_CONFS]
    ports = iter(free_ports(3 * len(configs)))
    nodes = {
        text(c, "server_name"): Node(text(c, "server_name"), next(ports), next(ports), next(ports))
        for c in configs
    }
    # Route TLS verifies names: the routes here go to 127.0.0.1, so the certificates name it.
    cluster_certificates(tmp_path / "certs", list(nodes), extra_hosts=["127.0.0.1"])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for config in configs:
            node = nodes[text(config, "server_name")]
            conf = tmp_path / f"{node.name}.conf"
            conf.write_text(dumps(local_copy(config, node, nodes, tmp_path / node.name)))
            with (tmp_path / f"{node.name}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [str(nats_server_binary()), "-c", str(conf)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a terminal's Ctrl-C is ours to handle
                    )
                )
        yield list(nodes.values())
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 10.0) -> None:
    """Polls `check` until it returns True; fails the test with `what` after `within_s`."""

    async def answered() -> bool:
        try:
            return await check()
        except (aiohttp.ClientError, OSError):
            return False  # not listening yet

    try:
        async with asyncio.timeout(within_s):
            while True:
                if await answered():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(what) from None


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_nats_cluster_forms_and_keeps_a_stream_at_three_replicas(
    nats_cluster: list[Node],
) -> None:
    names = {node.name for node in nats_cluster}
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def formed() -> bool:
            for node in nats_cluster:
                routez = await get_json(http, f"{node.monitor}/routez")
                peers = {route.get("remote_name") for route in routez["routes"]}
                async with http.get(f"{node.monitor}/healthz") as health:
                    if peers != names - {node.name} or health.status != 200:
                        return False
            return True

        await until(formed, "the cluster did not form")

        for node in nats_cluster:  # the settings reached every server as nats-server reads them
            varz = await get_json(http, f"{node.monitor}/varz")
            assert varz["max_payload"] == MAX_MSG_BYTES
            assert varz["jetstream"]["config"]["sync_always"] is True

        first = await nats.connect(nats_cluster[0].url, connect_timeout=5, allow_reconnect=False)
        last = await nats.connect(nats_cluster[-1].url, connect_timeout=5, allow_reconnect=False)
        try:
            config = StreamConfig(
                name="DEPLOY_CHECK",
                subjects=["deploy.check"],
                storage=StorageType.FILE,
                num_replicas=3,
            )

            async def created() -> bool:
                # /healthz can answer before the meta leader is known to every node: then the
                # stream API has no responder yet for a moment.
                try:
                    await first.jetstream(timeout=5).add_stream(config)
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    return False
                except nats.js.errors.NoStreamResponseError:
                    return False
                return True

            await until(created, "the cluster did not take the stream", 30.0)
            ack = await first.jetstream(timeout=5).publish("deploy.check", b"hello")
            # Under load (the whole suite on two cores) the first answer through another node
            # can take longer than one request's timeout: ask again, within a bound.
            read: list[bytes] = []

            async def replicated() -> bool:
                try:
                    read.append(
                        (await last.jetstream(timeout=5).get_msg("DEPLOY_CHECK", ack.seq)).data
                    )
                except nats.errors.TimeoutError:
                    return False
                return True

            await until(replicated, "the message was not readable through another node", 60.0)
            assert read == [b"hello"]
            info = await last.jetstream(timeout=5).stream_info("DEPLOY_CHECK")
            assert info.cluster is not None and info.cluster.leader is not None
            replicas = {replica.name for replica in info.cluster.replicas or []}
            assert {info.cluster.leader, *replicas} == names
        finally:
            await first.close()
            await last.close()

        async def stored_everywhere() -> bool:
            for node in nats_cluster:
                jsz = await get_json(http, f"{node.monitor}/jsz?accounts=true&streams=true")
                streams = [
                    stream
                    for account in jsz.get("account_details") or []
                    for stream in account.get("stream_detail") or []
                    if stream["name"] == "DEPLOY_CHECK"
                ]
                if [s["state"]["messages"] for s in streams] != [1]:
                    return False
            return True

        # Acked once a majority has it; the third copy follows within moments.
        await until(stored_everywhere, "the message is not on all three nodes", within_s=5)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_node_without_a_certificate_of_the_clusters_ca_cannot_join(
    nats_cluster: list[Node], tmp_path: Path
) -> None:
    # It knows the route password and speaks TLS, with a certificate of another CA.
    cluster_certificates(tmp_path / "other-ca", ["intruder"], extra_hosts=["127.0.0.1"])
    client, cluster_port, http_port = free_ports(3)
    target = nats_cluster[0]
    certs = tmp_path / "other-ca"
    config = {
        "server_name": "intruder",
        "listen": f"127.0.0.1:{client}",
        "http": f"127.0.0.1:{http_port}",
        "cluster": {
            "name": "dockyard",
            "listen": f"127.0.0.1:{cluster_port}",
            "tls": {
                "cert_file": str(certs / "intruder.pem"),
                "key_file": str(certs / "intruder-key.pem"),
                "ca_file": str(certs / "ca.pem"),
                "verify": True,
                "timeout": 3,
            },
            "routes": [
                "nats-route://dockyard-route:CHANGE-ME-route-password"
                f"@127.0.0.1:{target.cluster_port}"
            ],
        },
    }
    (tmp_path / "intruder.conf").write_text(dumps(cast(Config, config)))
    with (tmp_path / "intruder.log").open("wb") as log:
        intruder = subprocess.Popen(  # noqa: ASYNC220 - it returns at once; the server runs on
            [str(nats_server_binary()), "-c", str(tmp_path / "intruder.conf")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def tried() -> bool:
                return "TLS" in (tmp_path / "intruder.log").read_text()

            await until(tried, "the intruder never tried the route", within_s=20)
            await asyncio.sleep(2)  # a route would be up by now
            for node in nats_cluster:
                routez = await get_json(http, f"{node.monitor}/routez")
                peers = {route.get("remote_name") for route in routez["routes"]}
                assert "intruder" not in peers, node.name
    finally:
        intruder.kill()
        intruder.wait()
