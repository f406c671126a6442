"""Where `dockyard up` keeps its state, and the dev token it hands to the CLI."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from dockyard.client.target import config_token_path
from dockyard.config import parse_tokens
from dockyard.stack.data_dir import (
    Credentials,
    DataDir,
    UnsafePath,
    open_data_dir,
    write_private_file,
)
from dockyard.stack.errors import StackError

__all__ = ["SYSTEM_PG_ROOT", "Layout", "StackError"]

# Where PostgreSQL's data goes when the data dir is under a directory its own user cannot
# enter (as root, PostgreSQL runs as an unprivileged user; /root is 0700).
SYSTEM_PG_ROOT = Path("/var/lib/dockyard")


class Layout:
    """`<data-dir>/nats`, `<data-dir>/postgres` (or under /var/lib/dockyard), `<data-dir>/token`,
    `<data-dir>/credentials/`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self._checked: DataDir | None = None

    def open(self) -> DataDir:
        """The data dir, made if missing and checked (data_dir.open_data_dir): UnsafePath when
        another local user could have planted or swapped anything in it."""
        if self._checked is None:
            self._checked = open_data_dir(self.data_dir)
        return self._checked

    @property
    def credentials(self) -> Credentials:
        """`<data-dir>/credentials/` (0700, its files 0600)."""
        return self.open().credentials

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "token"

    def postgres_dir(self) -> Path:
        """The data dir's `postgres/`, or a stable place of its own when unreachable as root."""
        data_dir = self.open()
        if os.geteuid() != 0 or _others_can_enter(self.data_dir):
            return self.data_dir / "postgres"
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        # Checked as a data dir of its own (root's, no link, nobody else writes to it).
        place = open_data_dir(SYSTEM_PG_ROOT / digest)
        for directory in (SYSTEM_PG_ROOT, place.path):
            directory.chmod(0o755)  # PostgreSQL's own user goes through
        place.write_file("data-dir", f"{self.data_dir}")
        data_dir.write_file("postgres-location", f"{place.path / 'postgres'}")
        return place.path / "postgres"

    def tokens(self, env: Mapping[str, str]) -> tuple[str, str]:
        """(DOCKYARD_TOKENS for the services, the token the CLI should use)."""
        configured = env.get("DOCKYARD_TOKENS", "").strip()
        if configured:
            by_token = parse_tokens(configured)
            admin = [t for t, tenant in by_token.items() if tenant == "admin"]
            token = admin[0] if admin else next(iter(by_token))
            return configured, token
        # Only a token this user wrote, 0600, in a data dir nobody else can write to: a
        # planted one would hand the attacker every submission (security review F12).
        token = self.open().read_file(self.token_path.name) or secrets.token_urlsafe(24)
        return f"admin:{token}", token

    def write_token(self, token: str, env: Mapping[str, str]) -> list[Path]:
        """Write the token where the CLI looks (0600); return the paths written."""
        written = [self.open().write_file(self.token_path.name, token)]
        path = config_token_path(env)
        try:
            write_private_file(path, token)
            written.append(path)
        except (OSError, UnsafePath):
            pass  # e.g. a read-only home: the data dir's copy still works
        return written


def _others_can_enter(path: Path) -> bool:
    """Whether a user other than the owner (and not in its group) can reach `path`."""
    return all(d.stat().st_mode & stat.S_IXOTH for d in [*reversed(path.parents), path])
