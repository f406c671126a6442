"""A small certificate authority for a deployment's own TLS: NATS and PostgreSQL servers.

Why a private CA rather than self-signed server certificates: every client is given one file,
`ca.pem`, and verifies each server's name against it; a server's certificate can be reissued
without touching the clients. The CA's key stays with whoever made it (`dockyard credentials
init` keeps it in its trust directory, 0600) and signs nothing but these servers.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 825  # what browsers and most TLS stacks still accept for a leaf

_CA_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class IssuedPair:
    """A PEM certificate and its PKCS#8 PEM key, as bytes: the caller decides where they go."""

    cert: bytes
    key: bytes


class Authority:
    """A CA: its certificate and key, made new or read back from PEM."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key

    @classmethod
    def new(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> Authority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return cls(x509.load_pem_x509_certificate(cert_pem), key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self._key)

    def server(self, name: str, hosts: Sequence[str]) -> IssuedPair:
        """A server certificate valid for each of `hosts` (DNS names or IP literals)."""
        return self._issue(name, hosts, ExtendedKeyUsageOID.SERVER_AUTH)

    def node(self, name: str, hosts: Sequence[str]) -> IssuedPair:
        """A cluster node's certificate: routes are TLS both ways, each end both server and
        client, and verifies the other's name."""
        return self._issue(
            name, hosts, ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def client(self, name: str) -> IssuedPair:
        """A client certificate for mutual TLS, named `name`."""
        return self._issue(name, [name], ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(self, name: str, hosts: Sequence[str], *usages: x509.ObjectIdentifier) -> IssuedPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def read_authority(directory: Path) -> Authority | None:
    """The CA kept in `directory` (ca.pem, ca-key.pem), or None where there is none yet."""
    cert, key = directory / "ca.pem", directory / "ca-key.pem"
    if not (cert.is_file() and key.is_file()):
        return None
    return Authority.load(cert.read_bytes(), key.read_bytes())
