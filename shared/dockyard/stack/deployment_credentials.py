"""Credentials for a deployment of separate containers (compose.yaml): `dockyard credentials init`.

`dockyard up` keeps everything in one directory its one user owns. A compose deployment runs
each service in a container of its own, as its own user, and each must see only what it needs:
so the trust material is made once in `<dir>/trust/` (the NATS operator and account keys, the
CA's key; nothing mounts it) and each service gets a directory of its own, mounted read-only at
`/run/dockyard`:

    nats/          auth.conf (JWT auth), tls.conf, server.pem, server-key.pem
    postgres/      server.pem, server-key.pem (owned by the image's postgres user)
    migrate/       ca.pem
    scheduler/     scheduler.creds, ca.pem, claim.seed, secrets.key
    log-relay/     log-relay.creds, ca.pem
    janitor/       janitor.creds, ca.pem
    orchestrator-<N>/  orchestrator-<NAME>.creds, ca.pem, claim.pub, secrets.key

Run again (every `docker compose up` does), it keeps the keys and the CA, mints every
service's NATS user afresh (its permissions as this version's code needs them) and adds
orchestrators when more are asked for. Every file is 0600, every directory 0700.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dockyard.bus.permissions import Role, check_name
from dockyard.stack.certificates import Authority, read_authority
from dockyard.stack.claim_keys import new_claim_seed, public_key_of
from dockyard.stack.nats_credentials import NatsCredentials

MOUNT: Final = "/run/dockyard"
NATS_MOUNT: Final = "/etc/nats/credentials"
_CA_NAME: Final = "Dockyard deployment CA"


@dataclass(frozen=True)
class Layout:
    """Who runs where: host names the certificates name, the users that read each directory."""

    orchestrators: int = 2
    nats_hosts: tuple[str, ...] = ("nats", "localhost", "127.0.0.1")
    postgres_hosts: tuple[str, ...] = ("postgres", "localhost", "127.0.0.1")
    services_owner: tuple[int, int] = (10001, 10001)  # deploy/Dockerfile's user
    postgres_owner: tuple[int, int] = (999, 999)  # the postgres image's user
    # Run as root without CAP_DAC_OVERRIDE (compose drops every capability), so they read
    # only files root owns.
    root_services: frozenset[str] = field(default=frozenset({"janitor", "nats"}))
    queues: tuple[str, ...] = ("default",)
    mount: str = MOUNT
    nats_mount: str = NATS_MOUNT  # where compose mounts nats/: beside the config, for include

    def orchestrator_names(self) -> list[str]:
        return [check_name(f"compose-{i}") for i in range(1, self.orchestrators + 1)]


class DeploymentCredentials:
    """The directory `dockyard credentials init` fills."""

    def __init__(self, directory: Path, layout: Layout) -> None:
        self.directory = Path(directory).absolute()
        self.layout = layout
        self.trust = NatsCredentials(self.directory / "trust")

    def ensure(self) -> list[str]:
        """Make or refresh everything; the names of the service directories written."""
        _directory(self.directory, (os.geteuid(), os.getegid()))
        self.trust.ensure()
        authority = self._authority()
        claim_seed = self._kept("claim.seed", new_claim_seed)
        secrets_key = self._kept("secrets.key", _new_secrets_key)
        self._nats(authority)
        self._postgres(authority)
        ca = authority.cert_pem
        self._service("migrate", {"ca.pem": ca})
        for role in ("scheduler", "log-relay", "janitor"):
            files = {f"{role}.creds": self._creds(role), "ca.pem": ca}
            if role == "scheduler":
                files |= {"claim.seed": claim_seed.encode(), "secrets.key": secrets_key.encode()}
            self._service(role, files)
        claim_public = (public_key_of(claim_seed) + "\n").encode()
        names = self.layout.orchestrator_names()
        for name in names:
            self._service(
                f"orchestrator-{name}",
                {
                    f"orchestrator-{name}.creds": self._creds("orchestrator", name),
                    "ca.pem": ca,
                    "claim.pub": claim_public,
                    "secrets.key": secrets_key.encode(),
                },
                owner=(0, 0),
            )
        return ["nats", "postgres", "migrate", "scheduler", "log-relay", "janitor"] + [
            f"orchestrator-{name}" for name in names
        ]

    def _authority(self) -> Authority:
        found = read_authority(self.trust.directory)
        if found is not None:
            return found
        made = Authority.new(_CA_NAME)
        _write(self.trust.directory / "ca-key.pem", made.key_pem, None)
        _write(self.trust.directory / "ca.pem", made.cert_pem, None)  # last: read_authority
        return made

    def _kept(self, name: str, make: Callable[[], str]) -> str:
        path = self.trust.directory / name
        if not path.is_file():
            _write(path, make().encode(), None)
        return path.read_text()

    def _creds(self, role: Role, name: str | None = None) -> bytes:
        queues = self.layout.queues
        return self.trust.mint(role, name, queues=queues).read_bytes()

    def _nats(self, authority: Authority) -> None:
        pair = self._server_pair("nats", authority, self.layout.nats_hosts)
        base = self.layout.nats_mount
        tls = (
            "# TLS for clients (dockyard credentials init). Clients verify the server against\n"
            "# ca.pem; `verify` is off: they prove who they are with their JWT, not a cert.\n"
            "tls {\n"
            f'  cert_file: "{base}/server.pem"\n'
            f'  key_file: "{base}/server-key.pem"\n'
            "  timeout: 2\n"
            "}\n"
        )
        self._service(
            "nats",
            {
                "auth.conf": self.trust.server_config().encode(),
                "tls.conf": tls.encode(),
                "server.pem": pair[0],
                "server-key.pem": pair[1],
            },
        )

    def _postgres(self, authority: Authority) -> None:
        cert, key = self._server_pair("postgres", authority, self.layout.postgres_hosts)
        files = {"server.pem": cert, "server-key.pem": key}
        self._service("postgres", files, owner=self.layout.postgres_owner)

    def _server_pair(
        self, name: str, authority: Authority, hosts: Sequence[str]
    ) -> tuple[bytes, bytes]:
        """The server's certificate, kept while it names the same hosts."""
        cert_path = self.trust.directory / f"{name}.pem"
        key_path = self.trust.directory / f"{name}-key.pem"
        names = self.trust.directory / f"{name}.hosts"
        wanted = ",".join(hosts)
        if not (cert_path.is_file() and key_path.is_file() and _text(names) == wanted):
            pair = authority.server(name, hosts)
            _write(key_path, pair.key, None)
            _write(cert_path, pair.cert, None)
            _write(names, wanted.encode(), None)
        return cert_path.read_bytes(), key_path.read_bytes()

    def _service(
        self, service: str, files: dict[str, bytes], owner: tuple[int, int] | None = None
    ) -> None:
        if owner is None:
            root = service in self.layout.root_services
            owner = (0, 0) if root else self.layout.services_owner
        directory = self.directory / service
        _directory(directory, owner)
        for name, data in files.items():
            _write(directory / name, data, owner)


def _new_secrets_key() -> str:
    """32 random bytes in base64, as `openssl rand -base64 32` prints them."""
    return base64.b64encode(os.urandom(32)).decode() + "\n"


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _directory(path: Path, owner: tuple[int, int]) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    path.chmod(0o700)
    _chown(path, owner)


def _write(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """0600 through a temporary name, never followed through a link, then given to `owner`."""
    partial = path.with_name(f".{path.name}.tmp")
    if partial.exists() or partial.is_symlink():
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    if owner is not None:
        _chown(partial, owner)
    os.replace(partial, path)


def _chown(path: Path, owner: tuple[int, int]) -> None:
    if os.geteuid() == 0:  # only root can give files away; others keep what they make
        os.chown(path, *owner, follow_symlinks=False)


def cluster_certificates(
    directory: Path, nodes: Sequence[str], extra_hosts: Sequence[str] = ()
) -> list[Path]:
    """Route TLS for a NATS cluster (deploy/nats/cluster/): a CA kept in `directory` and, per
    node, a certificate naming it (and `extra_hosts`), made where missing. The files written.

    Each node mounts the directory at /etc/nats/certs; routes verify both ends against ca.pem,
    so only a node holding a certificate of this CA can join.
    """
    directory = Path(directory).absolute()
    _directory(directory, (os.geteuid(), os.getegid()))
    authority = read_authority(directory)
    if authority is None:
        authority = Authority.new("Dockyard NATS cluster CA")
        _write(directory / "ca-key.pem", authority.key_pem, None)
        _write(directory / "ca.pem", authority.cert_pem, None)
    written = []
    for node in nodes:
        cert, key = directory / f"{node}.pem", directory / f"{node}-key.pem"
        if not (cert.is_file() and key.is_file()):
            pair = authority.node(node, [node, *extra_hosts])
            _write(key, pair.key, None)
            _write(cert, pair.cert, None)
            written += [cert, key]
    return written
