"""A PostgreSQL server run from the binaries the `pgserver` wheel ships.

Only the binaries are used: pgserver's own manager daemonises through pg_ctl and shares one
server per data dir between processes, while we need a child we can SIGKILL and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import stat
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

# Any other local user can reach 127.0.0.1, so every connection proves a password (SCRAM);
# nothing is `trust`, not even a unix socket (there is none, but the line costs nothing).
_PG_HBA = """\
# Written by dockyard.embedded at every start: every connection needs a password (SCRAM).
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
"""
# In the cluster's own dir: a hash of the superuser password last set, so it is set (in
# single-user mode, no network involved) only when it changed or was never set.
_PASSWORD_MARK = "dockyard-superuser-password.sha256"
_TLS_FILES = ("server.crt", "server.key")


class EmbeddedPostgres(EmbeddedServer):
    """One local PostgreSQL cluster in `data_dir`, created on first start and kept after.

    PostgreSQL refuses to run as root; as root, the server runs as the system user `os_user`
    (created when missing) and the data dir is handed over to it.

    The bootstrap superuser `user` logs in with `password` (SCRAM, over TCP on 127.0.0.1
    only); without one, a random password is made for this object's life. Given the
    PEM files `tls_cert` and `tls_key`, the server also speaks TLS. `bin_dir` picks another
    PostgreSQL build (Debian's `/usr/lib/postgresql/N/bin`) than the pgserver wheel's.
    `host` is the address it listens on (another than 127.0.0.1 also lets in clients of that
    address's subnets, with a password); `netns` a network namespace to run it in.
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
        password: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        bin_dir: Path | None = None,
        host: str = _HOST,
        netns: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.netns = netns
        self.port = port if port is not None else free_port(_HOST if netns else host)
        self.user = user
        self.database = database
        self.fsync = fsync
        self.max_connections = max_connections
        self.os_user = os_user
        self.start_timeout = start_timeout
        self.password = password or secrets.token_urlsafe(32)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        self._bin_dir = bin_dir or postgres_bin_dir()
        self._wheel_build = bin_dir is None  # a system build is reachable by its users already
        self._process = ServerProcess("postgres", self.data_dir / "postgres.log")

    @property
    def url(self) -> str:
        """The superuser's URL, password included: pass it on, never print it."""
        return self.admin_url(self.database)

    def admin_url(self, dbname: str = "postgres") -> str:
        """A URL for the superuser on another database (to create or drop databases)."""
        return self.url_as(self.user, self.password, dbname)

    def url_as(self, user: str, password: str | None, dbname: str | None = None) -> str:
        """A URL for another role of this server (the password URL-quoted)."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname or self.database)}"

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
        # Every start: a cluster made by an earlier version (trust) is moved to passwords.
        await asyncio.to_thread(self._write_private, "pg_hba.conf", self._pg_hba(), run_as)
        await asyncio.to_thread(self._install_tls, run_as)
        await self._set_password(run_as)
        self._process.spawn(self._server_argv(), env=_child_env(), run_as=run_as, netns=self.netns)
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
        """Hand the data dir (and binaries it can run) to the server's user; its (uid, gid).

        Never through a symbolic link: as root, a planted `postgres -> /etc` would otherwise
        hand /etc to the server's user (security review F12)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.data_dir.mkdir(mode=0o700)
        run_as = None
        if os.geteuid() == 0:
            run_as = ensure_os_user(self.os_user)
            require_searchable(self.data_dir.parent, run_as, self.os_user)
            if self._wheel_build:
                self._bin_dir = bin_dir_usable_by(self._bin_dir, run_as)
        fd = _open_own_dir(self.data_dir, {os.geteuid(), *(run_as[:1] if run_as else ())})
        try:
            if run_as is not None:
                chown_tree(fd, self.data_dir, run_as)
            # PostgreSQL refuses a data dir others can read.
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return run_as

    async def _initdb(self, run_as: tuple[int, int] | None) -> None:
        argv = [
            str(self._bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={self.user}",  # the bootstrap superuser is our role
            "--encoding=UTF8",
            "--locale=C",  # no dependency on the host's installed locales
            # Nobody gets in until pg_hba.conf (ours) and the password are in place.
            "--auth=reject",
            "--no-instructions",
        ]
        if not self.fsync:
            argv.append("--no-sync")
        result = await asyncio.to_thread(_run, argv, run_as)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n{result.stdout}"
            )

    async def _set_password(self, run_as: tuple[int, int] | None) -> None:
        """Give the superuser `password`, in single-user mode (before any client can connect),
        unless it already has it."""
        mark = hashlib.sha256(b"dockyard-embedded-postgres\0" + self.password.encode()).hexdigest()
        if self._read_mark() == mark:
            return
        literal = self.password.replace("'", "''")
        statement = f"ALTER ROLE {quote_ident(self.user)} PASSWORD '{literal}'\n"
        argv = [str(self._bin_dir / "postgres"), "--single", "-D", str(self.data_dir),
                "-c", "exit_on_error=on", "-c", "password_encryption=scram-sha-256",
                "-c", "log_statement=none", "postgres"]  # fmt: skip
        result = await asyncio.to_thread(_run, argv, run_as, statement)
        if result.returncode != 0 or "ERROR:" in result.stdout:
            # The output echoes no statement: it holds no password.
            raise EmbeddedServerError(
                f"could not set the PostgreSQL superuser's password in {self.data_dir} "
                f"(exit {result.returncode}):\n{result.stdout[-4000:]}"
            )
        await asyncio.to_thread(self._write_private, _PASSWORD_MARK, mark.encode(), run_as)

    def _read_mark(self) -> str | None:
        try:
            fd = os.open(self.data_dir / _PASSWORD_MARK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            return os.read(fd, 256).decode(errors="replace").strip()
        finally:
            os.close(fd)

    def _install_tls(self, run_as: tuple[int, int] | None) -> None:
        """Copy the certificate and key in (the server wants its key 0600 and its own)."""
        if self._tls is None:
            return
        for source, name in zip(self._tls, _TLS_FILES, strict=True):
            self._write_private(name, Path(source).read_bytes(), run_as)

    def _write_private(self, name: str, data: bytes, run_as: tuple[int, int] | None) -> None:
        """Replace a file of the cluster's dir (0600, the server user's), never via a link."""
        fd = _open_own_dir(self.data_dir, {os.geteuid(), *(run_as[:1] if run_as else ())})
        temp = f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(temp, flags, 0o600, dir_fd=fd)
            try:
                os.write(out, data)
                if run_as is not None:
                    os.fchown(out, *run_as)
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=fd)
            raise
        finally:
            os.close(fd)

    def _pg_hba(self) -> bytes:
        if self.host == _HOST:
            return _PG_HBA.encode()
        # Listening on another address (a host of its own, tests/support/hosts.py): the
        # clients of its own subnets, with a password as well.
        return (_PG_HBA + "host all all samenet scram-sha-256\n").encode()

    def _server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            # No unix socket: its path is capped at 107 bytes, which deep data dirs exceed,
            # and every client here speaks TCP.
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            "log_line_prefix": "%m [%p] ",
            "password_encryption": "scram-sha-256",
        }
        if self._tls is not None:
            settings |= {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
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
        except asyncpg.InvalidAuthorizationSpecificationError as error:
            # Never the case for a password we set ourselves: say so at once, not in 60 s.
            raise EmbeddedServerError(f"PostgreSQL refused the superuser: {error}") from None
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


def _open_own_dir(path: Path, owners: set[int]) -> int:
    """A descriptor of directory `path` itself (not a link), owned by one of `owners`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        kind = "a symbolic link" if path.is_symlink() else "not a directory"
        raise EmbeddedServerError(
            f"refusing PostgreSQL data dir {path}: it is {kind} ({error.strerror}); "
            "give the real directory"
        ) from None
    st = os.fstat(fd)
    if st.st_uid not in owners or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise EmbeddedServerError(
            f"refusing PostgreSQL data dir {path}: it belongs to uid {st.st_uid} or others "
            f"can write to it (mode {stat.S_IMODE(st.st_mode):04o}); use a directory of your own"
        )
    return fd


def _run(
    argv: list[str], run_as: tuple[int, int] | None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
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
