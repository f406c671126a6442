"""NATS identities for Dockyard: decentralized JWT, one operator, one account, a user per service.

Why JWT rather than users in the server's config: users are not configured on the server at
all. The server trusts the operator, and knows the account from a resolver (here `MEMORY`,
preloaded in its config); a user proves itself with a JWT the account key signed, carrying
its permissions (bus/permissions.py), and the seed it signs the server's nonce with. So
`dockyard credentials orchestrator NAME` adds an orchestrator host against a running NATS:
it signs one more user JWT, and the server needs no reload. (A new *account* would; there is
only one.)

What lives in the directory (0700; every file 0600): the operator's, the account's and the
system account's seeds and JWTs, the server's auth block (`nats-auth.conf`), and a `.creds`
file per identity (`<role>.creds`, `orchestrator-<NAME>.creds`). The seeds of the operator and
the account are the keys to everything: keep them there, or offline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.signing  # nkeys' own dependency
import nkeys

from dockyard.bus.permissions import Permissions, Role, check_name, for_role

ACCOUNT_NAME: Final = "DOCKYARD"
SYSTEM_ACCOUNT_NAME: Final = "SYS"
OPERATOR_NAME: Final = "dockyard"

_HEADER: Final = {"typ": "JWT", "alg": "ed25519-nkey"}
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600

_PREFIXES: Final = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


class CredentialsError(RuntimeError):
    """Raised when the credentials directory is unusable (unsafe modes, a broken file)."""


# --- keys and JWTs ---------------------------------------------------------------------------


def new_seed(kind: str) -> bytes:
    """A fresh nkey seed (`S…`) for an operator, account or user."""
    return bytes(nkeys.encode_seed(os.urandom(32), _PREFIXES[kind]))


def public_key(seed: bytes) -> str:
    return bytes(nkeys.from_seed(bytearray(seed)).public_key).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: Mapping[str, Any], signer_seed: bytes, *, now: float | None = None) -> str:
    """A NATS JWT (v2) of `claims`, issued and signed by the nkey of `signer_seed`.

    `iat` and `iss` are set here, and `jti` is the hash of the claims, as nats-io/jwt makes it.
    """
    body: dict[str, Any] = {
        **claims,
        "iat": int(now if now is not None else time.time()),
        "iss": public_key(signer_seed),
        "jti": "",
    }
    digest = hashlib.sha512(json.dumps(body, sort_keys=True).encode()).digest()[:32]
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    signature = nkeys.from_seed(bytearray(signer_seed)).sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a NATS JWT, signature verified against its `iss`; ValueError if not."""
    try:
        header, body, signature = token.strip().split(".")
        claims: dict[str, Any] = json.loads(_unb64(body))
        _verify(claims["iss"], f"{header}.{body}".encode(), _unb64(signature))
    except (ValueError, KeyError, TypeError, nacl.exceptions.BadSignatureError) as exc:
        raise ValueError(f"not a valid NATS JWT: {exc}") from None
    return claims


def _verify(issuer: str, data: bytes, signature: bytes) -> None:
    raw = base64.b32decode(issuer + "=" * (-len(issuer) % 8))
    if len(raw) != 35 or bytes(nkeys.crc16_checksum(bytearray(raw[:-2]))) != raw[-2:]:
        raise ValueError(f"not a public nkey: {issuer}")
    nacl.signing.VerifyKey(raw[1:-2]).verify(data, signature)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def operator_claims(operator_seed: bytes, system_account: str) -> dict[str, Any]:
    return {
        "sub": public_key(operator_seed),
        "name": OPERATOR_NAME,
        "nats": {"system_account": system_account, "type": "operator", "version": 2},
    }


def account_claims(account_seed: bytes, name: str, *, jetstream: bool) -> dict[str, Any]:
    unlimited = {
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
    }  # fmt: skip
    if jetstream:  # JetStream is on for an account whose storage limits are not zero
        unlimited |= {
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        }  # fmt: skip
    return {
        "sub": public_key(account_seed),
        "name": name,
        "nats": {"limits": unlimited, "type": "account", "version": 2},
    }


def user_claims(user_public: str, name: str, permissions: Permissions) -> dict[str, Any]:
    nats: dict[str, Any] = {
        "pub": {"allow": list(permissions.publish)},
        "sub": {"allow": list(permissions.subscribe)},
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }
    if permissions.responses:
        nats["resp"] = {"max": permissions.responses, "ttl": 60_000_000_000}  # ns: one minute
    return {"sub": user_public, "name": name, "nats": nats}


def creds_file_text(user_jwt: str, user_seed: bytes) -> str:
    """A `.creds` file as `nsc` writes it, and nats-py's `user_credentials` reads it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def read_creds_jwt(text: str) -> str:
    """The user JWT of a `.creds` file's text; ValueError if it holds none."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("-----BEGIN") and "JWT" in line and i + 1 < len(lines):
            return lines[i + 1]
    raise ValueError("no user JWT in the credentials")


# --- the directory ---------------------------------------------------------------------------


def credentials_dir(data_dir: Path) -> Path:
    """Where `dockyard up` keeps credentials: `<data-dir>/credentials/`."""
    return Path(data_dir).absolute() / "credentials"


class NatsCredentials:
    """The credentials directory: the trust chain, made once, and a creds file per identity."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()

    # Where things are.
    def path(self, name: str) -> Path:
        return self.directory / name

    def creds_path(self, role: Role, name: str | None = None) -> Path:
        return self.path(f"{role}-{name}.creds" if name else f"{role}.creds")

    @property
    def server_config_path(self) -> Path:
        return self.path("nats-auth.conf")

    @property
    def exists(self) -> bool:
        return self.path("account.nk").is_file() and self.path("operator.jwt").is_file()

    def ensure(self) -> bool:
        """Make the directory and the trust chain if missing; whether they were made now.

        The operator, account and system-account keys are made once: every identity minted
        later is signed by the same account key, so creds already handed out stay valid.
        """
        self._ensure_directory()
        if self.exists:
            self._check_modes()
            return False
        operator, account, system = new_seed("operator"), new_seed("account"), new_seed("account")
        system_public = public_key(system)
        self._write("operator.nk", operator)
        self._write("account.nk", account)
        self._write("system.nk", system)
        system_claims = account_claims(system, SYSTEM_ACCOUNT_NAME, jetstream=False)
        self._write("system.jwt", encode_jwt(system_claims, operator).encode())
        dockyard_claims = account_claims(account, ACCOUNT_NAME, jetstream=True)
        self._write("account.jwt", encode_jwt(dockyard_claims, operator).encode())
        # Written last: `exists` holds only once the whole chain is there.
        root = operator_claims(operator, system_public)
        self._write("operator.jwt", encode_jwt(root, operator).encode())
        self._write("nats-auth.conf", self.server_config().encode())
        return True

    def server_config(self) -> str:
        """The server's auth block: trust this operator, know its two accounts from memory."""
        operator_jwt = self._read("operator.jwt")
        system_jwt, account_jwt = self._read("system.jwt"), self._read("account.jwt")
        system = decode_jwt(system_jwt)["sub"]
        account = decode_jwt(account_jwt)["sub"]
        return (
            "# Decentralized JWT auth (dockyard credentials): users are not configured here.\n"
            f"operator: {operator_jwt}\n"
            f"system_account: {system}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {system}: {system_jwt}\n"
            f"  {account}: {account_jwt}\n"
            "}\n"
        )

    def mint(
        self, role: Role, name: str | None = None, *, queues: Iterable[str] = ("default",)
    ) -> Path:
        """A `.creds` file for `role` (an orchestrator's for `name`, serving `queues`): a new
        user key each time, signed by the account. Its path."""
        if not self.exists:
            raise CredentialsError(f"no NATS credentials in {self.directory} (run `dockyard up`)")
        if role == "orchestrator":
            check_name(name or "")
        elif name is not None:
            raise CredentialsError(f"only orchestrators have named identities, not {role}")
        permissions = for_role(role, name, list(queues))
        seed = new_seed("user")
        label = f"{role} {name}" if name else role
        claims = user_claims(public_key(seed), label, permissions)
        user_jwt = encode_jwt(claims, self._read("account.nk").encode())
        path = self.creds_path(role, name)
        self._write(path.name, creds_file_text(user_jwt, seed).encode())
        return path

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if self.directory.is_symlink() or not self.directory.is_dir():
            raise CredentialsError(f"{self.directory} is not a directory")
        info = self.directory.stat()
        if info.st_uid != os.geteuid():
            raise CredentialsError(f"{self.directory} belongs to another user (uid {info.st_uid})")
        self.directory.chmod(_DIR_MODE)

    def _check_modes(self) -> None:
        for file in self.directory.iterdir():
            if file.is_file() and file.stat().st_mode & 0o077:
                file.chmod(_FILE_MODE)

    def _read(self, name: str) -> str:
        try:
            return self.path(name).read_text().strip()
        except OSError as exc:
            raise CredentialsError(f"cannot read {self.path(name)}: {exc}") from None

    def _write(self, name: str, data: bytes) -> None:
        """Write a file 0600 through a temporary name: never half-written, never readable."""
        final = self.path(name)
        partial = final.with_name(f".{final.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, final)
