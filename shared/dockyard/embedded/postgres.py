"""A PostgreSQL server run from the binaries the `pgserver` wheel ships.

Only the binaries are used: pgserver's own manager daemonises through pg_ctl and shares one
server per data dir between processes, while we need a child we can SIGKILL and restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import asyncpg

from dockyard.embedded._pg_install import (
    bin_dir_usable_by,
    chown_tree,
    ensure_os_user,
    postgres_bin_dir,
    require_searchable,
)
from dockyard.embedded._process import EmbeddedServer, EmbeddedServerError, ServerProcess, free_port

DEFAULT_OS_USER = "dockyard-pg"
_HOST = "127.0.0.1"

# Trust is safe only because the server listens on loopback and has no unix socket.
_PG_HBA = """\
# Written by dockyard.embedded: any local TCP client may connect as any role, nobody else.
host all all 127.0.0.1/32 trust
"""


class EmbeddedPostgres(EmbeddedServer):
    """One local PostgreSQL cluster in `data_dir`, created on first start and kept after.

    PostgreSQL refuses to run as root; as root, the server runs as the system user `os_user`
    (created when missing) and the data dir is handed over to it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        user: str = "dockyard",
        database: str = "dockyard",
        *,
        fsync: bool = True,
        max_connections: int = 200,
        os_user: str = DEFAULT_OS_USER,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port(_HOST)
        self.user = user
        self.database = database
        self.fsync = fsync
        self.max_connections = max_connections
        self.os_user = os_user
        self.start_timeout = start_timeout
        self._bin_dir = postgres_bin_dir()
        self._process = ServerProcess("postgres", self.data_dir / "postgres.log")

    @property
    def url(self) -> str:
        return self.admin_url(self.database)

    def admin_url(self, dbname: str = "postgres") -> str:
        """A URL for the same role on another database (to create or drop databases)."""
        return f"postgresql://{quote(self.user, safe='')}@{_HOST}:{self.port}/{quote(dbname)}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def paused(self) -> bool:
        return self._process.paused

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    async def start(self) -> None:
        """Start (after initdb on first use); return once `url` accepts connections."""
        run_as = await asyncio.to_thread(self._prepare_data_dir)
        if not (self.data_dir / "PG_VERSION").is_file():
            await self._initdb(run_as)
        self._process.spawn(self._server_argv(), env=_child_env(), run_as=run_as)
        try:
            await self._process.wait_ready(
                self._accepts_connections, within_s=self.start_timeout, what="accepting connections"
            )
            await self._ensure_database()
        except BaseException:
            await self._process.kill()
            raise

    async def stop(self, grace_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, a checkpoint is written."""
        await self._process.terminate(signal.SIGINT, grace_s)

    def _prepare_data_dir(self) -> tuple[int, int] | None:
        """Hand the data dir (and binaries it can run) to the server's user; its (uid, gid)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = None
        if os.geteuid() == 0:
            run_as = ensure_os_user(self.os_user)
            require_searchable(self.data_dir.parent, run_as, self.os_user)
            self._bin_dir = bin_dir_usable_by(self._bin_dir, run_as)
            chown_tree(self.data_dir, run_as)
        # PostgreSQL refuses a data dir others can read.
        self.data_dir.chmod(0o700)
        return run_as

    async def _initdb(self, run_as: tuple[int, int] | None) -> None:
        argv = [
            str(self._bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={self.user}",  # the bootstrap superuser is our role
            "--encoding=UTF8",
            "--locale=C",  # no dependency on the host's installed locales
            "--auth=trust",
            "--no-instructions",
        ]
        if not self.fsync:
            argv.append("--no-sync")
        result = await asyncio.to_thread(_run, argv, run_as)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n{result.stdout}"
            )
        (self.data_dir / "pg_hba.conf").write_text(_PG_HBA)

    def _server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": _HOST,
            "port": str(self.port),
            # No unix socket: its path is capped at 107 bytes, which deep data dirs exceed,
            # and every client here speaks TCP.
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            "log_line_prefix": "%m [%p] ",
        }
        if not self.fsync:
            # Torn pages need an OS crash, which fsync=off already gives up on. Commits stay
            # synchronous: synchronous_commit=off would lose acknowledged commits even on a
            # plain SIGKILL, which tests inflict on purpose.
            settings["full_page_writes"] = "off"
        argv = [str(self._bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    async def _accepts_connections(self) -> bool:
        try:
            conn = await asyncpg.connect(self.admin_url(), timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await conn.close()
        return True

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self.admin_url())
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.database
            )
            if not exists:
                await conn.execute(f"CREATE DATABASE {quote_ident(self.database)}")
        finally:
            await conn.close()


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted, for names that cannot be bound as parameters."""
    return '"' + name.replace('"', '""') + '"'


def _child_env() -> dict[str, str]:
    # A clean environment: inherited PG* variables or a locale missing on this host would
    # change how the server behaves.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


def _run(argv: list[str], run_as: tuple[int, int] | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_child_env(),
        cwd="/",
        user=run_as[0] if run_as else None,
        group=run_as[1] if run_as else None,
        extra_groups=[] if run_as else None,
        check=False,
    )
