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

# Where PostgreSQL's data goes when the data dir is under a directory its own user cannot
# enter (as root, PostgreSQL runs as an unprivileged user; /root is 0700).
SYSTEM_PG_ROOT = Path("/var/lib/dockyard")


class StackError(RuntimeError):
    """Raised when the stack cannot start; the message is one line for the user."""


class Layout:
    """`<data-dir>/nats`, `<data-dir>/postgres` (or under /var/lib/dockyard), `<data-dir>/token`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "token"

    def postgres_dir(self) -> Path:
        """The data dir's `postgres/`, or a stable place of its own when unreachable as root."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or _others_can_enter(self.data_dir):
            return self.data_dir / "postgres"
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        SYSTEM_PG_ROOT.mkdir(parents=True, exist_ok=True)
        SYSTEM_PG_ROOT.chmod(0o755)
        place = SYSTEM_PG_ROOT / digest
        place.mkdir(exist_ok=True)
        place.chmod(0o755)
        (place / "data-dir").write_text(f"{self.data_dir}\n")
        (self.data_dir / "postgres-location").write_text(f"{place / 'postgres'}\n")
        return place / "postgres"

    def tokens(self, env: Mapping[str, str]) -> tuple[str, str]:
        """(DOCKYARD_TOKENS for the services, the token the CLI should use)."""
        configured = env.get("DOCKYARD_TOKENS", "").strip()
        if configured:
            by_token = parse_tokens(configured)
            admin = [t for t, tenant in by_token.items() if tenant == "admin"]
            token = admin[0] if admin else next(iter(by_token))
            return configured, token
        try:
            token = self.token_path.read_text().strip()
        except FileNotFoundError:
            token = ""
        if not token:
            token = secrets.token_urlsafe(24)
        return f"admin:{token}", token

    def write_token(self, token: str, env: Mapping[str, str]) -> list[Path]:
        """Write the token where the CLI looks (0600); return the paths written."""
        written = []
        for path in (self.token_path, config_token_path(env)):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as file:
                    file.write(token + "\n")
                written.append(path)
            except OSError:
                continue  # e.g. a read-only home: the data dir's copy still works
        return written


def _others_can_enter(path: Path) -> bool:
    """Whether a user other than the owner (and not in its group) can reach `path`."""
    return all(d.stat().st_mode & stat.S_IXOTH for d in [*reversed(path.parents), path])
