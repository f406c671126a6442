"""Where the CLI connects and with which token: the contract's variables, then the dev token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from msgspec import Struct

DEFAULT_API_URL = "http://127.0.0.1:8700"
DEFAULT_LOGS_URL = "http://127.0.0.1:8701"


class Target(Struct, frozen=True, kw_only=True):
    api_url: str
    logs_url: str
    token: str | None


def config_token_path(env: Mapping[str, str] | None = None) -> Path:
    """`~/.config/dockyard/token` (or under $XDG_CONFIG_HOME): the last `up`'s dev token."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockyard" / "token"


def default_token_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where a dev token is looked for when DOCKYARD_TOKEN is not set, first found wins."""
    return [config_token_path(env), Path(".dockyard") / "token"]


def load_target(env: Mapping[str, str] | None = None) -> Target:
    env = os.environ if env is None else env
    token = env.get("DOCKYARD_TOKEN") or None
    if token is None:
        for path in default_token_paths(env):
            try:
                token = path.read_text().strip() or None
            except OSError:
                continue
            if token:
                break
    return Target(
        api_url=(env.get("DOCKYARD_API_URL") or DEFAULT_API_URL).rstrip("/"),
        logs_url=(env.get("DOCKYARD_LOGS_URL") or DEFAULT_LOGS_URL).rstrip("/"),
        token=token,
    )
