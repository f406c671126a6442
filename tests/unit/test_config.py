"""The contract's environment, read strictly: defaults, derived values, and clear refusals."""

from __future__ import annotations

import pytest

from dockyard.config import ConfigError, load


def test_defaults_are_the_contracts() -> None:
    settings = load({})
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.api_listen == ("127.0.0.1", 8700)
    assert settings.logs_listen == ("127.0.0.1", 8701)
    assert settings.max_jobs == 4
    assert settings.lease_s == 15
    assert settings.nats_replicas == 1
    assert settings.allowed_origins == ("http://127.0.0.1:8700", "http://localhost:8700")


def test_streams_at_three_replicas_on_a_cluster() -> None:
    assert load({"DOCKYARD_NATS_REPLICAS": "3"}).nats_replicas == 3
    with pytest.raises(ConfigError, match="DOCKYARD_NATS_REPLICAS"):
        load({"DOCKYARD_NATS_REPLICAS": "0"})


def test_the_page_origin_of_a_wildcard_listen_is_loopback_until_named() -> None:
    wildcard = load({"DOCKYARD_API_LISTEN": "0.0.0.0:8700"})
    assert wildcard.allowed_origins == ("http://127.0.0.1:8700", "http://localhost:8700")
    named = load({"DOCKYARD_API_LISTEN": "10.0.0.5:9000"})
    assert named.allowed_origins == ("http://10.0.0.5:9000",)
    chosen = load(
        {"DOCKYARD_API_LISTEN": "0.0.0.0:8700", "DOCKYARD_ALLOWED_ORIGINS": "https://jobs.example/"}
    )
    assert chosen.allowed_origins == ("https://jobs.example",)
