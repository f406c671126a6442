"""Certificates made in a test: a CA, a server certificate for 127.0.0.1, a client certificate
for mutual TLS, written as files. The certificates themselves come from the deployment's own
CA code (dockyard.stack.certificates), so the tests use what `dockyard credentials` makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dockyard.stack import certificates


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Authority:
    """A CA that signs server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str = "Dockyard test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._authority = certificates.Authority.new(name)
        self.ca = directory / "ca.pem"
        self.ca.write_bytes(self._authority.cert_pem)

    def server(self, name: str = "server", ip: str = "127.0.0.1") -> Pair:
        return self._write(name, self._authority.server(name, [ip]))

    def client(self, name: str = "client") -> Pair:
        return self._write(name, self._authority.client(name))

    def _write(self, name: str, issued: certificates.IssuedPair) -> Pair:
        pair = Pair(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        pair.cert.write_bytes(issued.cert)
        pair.key.write_bytes(issued.key)
        pair.key.chmod(0o600)
        return pair
