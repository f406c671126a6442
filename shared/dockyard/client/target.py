"""Where the CLI connects and with which token: the contract's variables, then the dev token.

The dev token is read from the user's own config dir only, never from the current directory:
a `./.dockyard/token` planted in a shared directory would send whoever runs the CLI there, with
their secrets, to the planter's tenant (security review F12, F16).
"""

from __future__ import annotations

import os
import stat
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
    return [config_token_path(env)]


class TokenError(Exception):
    """Raised when the token is a deploy file's placeholder, or its file is someone else's or
    others may write to it; the message is one line and never holds the token."""


def load_target(env: Mapping[str, str] | None = None) -> Target:
    env = os.environ if env is None else env
    token = env.get("DOCKYARD_TOKEN") or None
    if token is not None and "CHANGE-ME" in token.upper():
        raise TokenError(
            "DOCKYARD_TOKEN still holds a CHANGE-ME placeholder: set it to one of the tokens "
            "in DOCKYARD_TOKENS"
        )
    if token is None:
        for path in default_token_paths(env):
            token = _read_own_token(path)
            if token:
                break
    return Target(
        api_url=(env.get("DOCKYARD_API_URL") or DEFAULT_API_URL).rstrip("/"),
        logs_url=(env.get("DOCKYARD_LOGS_URL") or DEFAULT_LOGS_URL).rstrip("/"),
        token=token,
    )


def _read_own_token(path: Path) -> str | None:
    """The token in `path` if the file is this user's and only this user may write to it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # none written yet: requests go without a token and get 401
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise TokenError(
                f"{path} is not a file of yours: not using it as your token; remove it, or set "
                "DOCKYARD_TOKEN"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TokenError(
                f"{path} can be written by others (mode {stat.S_IMODE(st.st_mode):04o}): not "
                f"using it as your token; `chmod 600 {path}`, or set DOCKYARD_TOKEN"
            )
        return os.read(fd, 4096).decode(errors="replace").strip() or None
    finally:
        os.close(fd)
