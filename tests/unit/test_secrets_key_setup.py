"""DOCKYARD_SECRETS_KEY at start: `dockyard up` makes it once and hands it to the scheduler
and the orchestrator only; a key file that is missing or no key stops a service at start
with a message naming the file, never its content; the scheduler without one says so."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.config import ConfigError, load
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.scheduler.secret_sealing import secrets_ring
from dockyard.sealing import KeyRing
from dockyard.stack.secrets_key import SECRETS_KEY, SecretsKeyUnusable, secrets_key_env


class Files:
    def __init__(self, path: Path) -> None:
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def get_or_create(self, name: str, make: Callable[[], str] | None = None) -> str:
        target = self.path / name
        if not target.exists():
            assert make is not None
            target.write_text(make())
        return target.read_text()


def key_file(path: Path, raw: bytes | None = None) -> Path:
    path.write_text(base64.b64encode(raw or os.urandom(32)).decode() + "\n")
    return path


def test_up_makes_the_key_once_for_the_scheduler_and_the_orchestrator_only(
    tmp_path: Path,
) -> None:
    first = secrets_key_env({}, Files(tmp_path))
    path = str(tmp_path / SECRETS_KEY)
    assert first == {
        "scheduler": {"DOCKYARD_SECRETS_KEY": path},
        "orchestrator": {"DOCKYARD_SECRETS_KEY": path},
    }
    made = (tmp_path / SECRETS_KEY).read_text()
    assert len(base64.b64decode(made.strip())) == 32
    assert secrets_key_env({}, Files(tmp_path)) == first
    assert (tmp_path / SECRETS_KEY).read_text() == made  # kept: old jobs still open


def test_up_passes_a_given_key_list_on_and_refuses_one_that_is_no_key(tmp_path: Path) -> None:
    new, old = key_file(tmp_path / "new.key"), key_file(tmp_path / "old.key")
    given = f"{new},{old}"
    keys = secrets_key_env({"DOCKYARD_SECRETS_KEY": given}, Files(tmp_path / "credentials"))
    assert keys["orchestrator"]["DOCKYARD_SECRETS_KEY"] == given
    (tmp_path / "bad.key").write_text("s3cr3t-not-a-key\n")
    with pytest.raises(SecretsKeyUnusable, match=r"bad\.key") as caught:
        secrets_key_env({"DOCKYARD_SECRETS_KEY": str(tmp_path / "bad.key")}, Files(tmp_path))
    assert "s3cr3t" not in str(caught.value)


def test_the_orchestrator_reads_new_and_old_and_stops_on_a_missing_file(tmp_path: Path) -> None:
    old_raw = os.urandom(32)
    new, old = key_file(tmp_path / "new.key"), key_file(tmp_path / "old.key", old_raw)
    settings = load({"DOCKYARD_SECRETS_KEY": f"{new},{old}"})
    ring = OrchestratorConfig.from_settings(settings, env={}).secrets
    assert ring is not None and len(ring.keys) == 2
    assert ring.open(KeyRing.of(old_raw).seal("value-1", "ad"), "ad") == "value-1"
    assert OrchestratorConfig.from_settings(load({}), env={}).secrets is None
    missing = load({"DOCKYARD_SECRETS_KEY": str(tmp_path / "nowhere.key")})
    with pytest.raises(ConfigError, match=r"DOCKYARD_SECRETS_KEY: cannot read .*nowhere\.key"):
        OrchestratorConfig.from_settings(missing, env={})


def test_the_scheduler_without_a_key_warns_once_and_stops_on_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "dockyard.scheduler"):
        assert secrets_ring(load({})) is None
    assert "scheduler.secrets_refused" in caplog.text
    (tmp_path / "short.key").write_text(base64.b64encode(b"sixteen-bytes!!!").decode())
    with pytest.raises(ConfigError, match=r"short\.key does not hold a key"):
        secrets_ring(load({"DOCKYARD_SECRETS_KEY": str(tmp_path / "short.key")}))
    ring = secrets_ring(load({"DOCKYARD_SECRETS_KEY": str(key_file(tmp_path / "k"))}))
    assert ring is not None and ring.holder == "scheduler"
