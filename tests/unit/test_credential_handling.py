"""Credentials in configuration (security review F11, F16): placeholders are refused, URLs
are printed without their password, the CLI takes no token from the current directory."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from dockyard import config
from dockyard.client.target import TokenError, load_target
from dockyard.store.pool import redact_dsn
from dockyard.store.roles import scram_sha256_verifier


@pytest.mark.parametrize(
    "name",
    ["DOCKYARD_DATABASE_URL", "DOCKYARD_TOKENS", "DOCKYARD_NATS_URL", "DOCKYARD_CLAIM_KEY"],
)
def test_a_change_me_placeholder_in_a_credential_is_refused_without_its_value(name: str) -> None:
    value = {
        "DOCKYARD_DATABASE_URL": "postgresql://dockyard:CHANGE-ME-postgres-password@db/dockyard",
        "DOCKYARD_TOKENS": "admin:CHANGE-ME-admin-token",
        "DOCKYARD_NATS_URL": "nats://u:change-me@nats:4222",
        "DOCKYARD_CLAIM_KEY": "/etc/dockyard/CHANGE-ME",
    }[name]
    with pytest.raises(config.ConfigError) as raised:
        config.load({name: value})
    assert str(raised.value).startswith(f"{name} still holds a CHANGE-ME placeholder")
    assert value not in str(raised.value)


def test_the_cli_refuses_a_placeholder_token() -> None:
    with pytest.raises(TokenError, match="CHANGE-ME"):
        load_target({"DOCKYARD_TOKEN": "CHANGE-ME-admin-token"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cr%40t@127.0.0.1:5432/db", "postgresql://app:***@127.0.0.1:5432/db"),
        ("postgresql://app@db/db?password=s3cr%40t&sslmode=verify-full",
         "postgresql://app@db/db?password=***&sslmode=verify-full"),
        ("postgresql://app:p@ss@h1:5432,h2:5432/db", "postgresql://app:***@h1:5432,h2:5432/db"),
        ("postgresql://app@db/db", "postgresql://app@db/db"),
    ],
)  # fmt: skip
def test_a_postgres_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_dsn(url) == shown


def test_the_scram_verifier_is_the_one_postgresql_checks() -> None:
    password = "Zq-1_x"
    verifier = scram_sha256_verifier(password)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    assert method == "SCRAM-SHA-256"
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert int(iterations) == 4096
    assert stored_key == hashlib.sha256(client_key).digest()
    assert server_key == hmac.new(salted, b"Server Key", "sha256").digest()
    assert scram_sha256_verifier(password) != verifier  # a salt of its own each time


def test_a_token_planted_in_the_current_directory_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".dockyard").mkdir()
    (tmp_path / ".dockyard" / "token").write_text("planted\n")
    monkeypatch.chdir(tmp_path)
    target = load_target({"XDG_CONFIG_HOME": str(tmp_path / "empty-config")})
    assert target.token is None


def test_a_config_token_others_may_write_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "dockyard" / "token"
    token.parent.mkdir()
    token.write_text("secret\n")
    token.chmod(0o622)
    with pytest.raises(TokenError, match=r"can be written by others \(mode 0622\)") as raised:
        load_target({"XDG_CONFIG_HOME": str(tmp_path)})
    assert "secret" not in str(raised.value)
    token.chmod(0o600)
    assert load_target({"XDG_CONFIG_HOME": str(tmp_path)}).token == "secret"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_config_token_of_another_user_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "dockyard" / "token"
    token.parent.mkdir()
    token.write_text("theirs\n")
    token.chmod(0o600)
    os.chown(token, 65534, 65534)
    with pytest.raises(TokenError, match="not a file of yours"):
        load_target({"XDG_CONFIG_HOME": str(tmp_path)})
