"""Signed claim answers: the scheduler signs, orchestrators run only what verifies.

A claim answer holds what an orchestrator will run. NATS permissions decide who may answer
on an orchestrator's inbox; the signature makes sure that even a component allowed to
publish there cannot hand it a command no tenant submitted. The scheduler signs the answer's
exact payload bytes with an ed25519 key (an nkey seed, `DOCKYARD_CLAIM_KEY`) and puts the
detached signature and its public nkey in headers; an orchestrator checks both against the
public nkey it was given (`DOCKYARD_CLAIM_PUBLIC_KEY`) before it decodes the answer. The
answer names the job, attempt and orchestrator it is for, so a signed answer replayed to
another claim is refused too (claimer.py checks that).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dockyard.bus import names


class ClaimKeyError(ValueError):
    """Raised when a claim key or public key cannot be read or is not an nkey; says which."""


class ClaimSigner:
    """Signs claim answers with the scheduler's seed."""

    def __init__(self, seed: bytes) -> None:
        try:
            self._key = nkeys.from_seed(seed.strip())
            self.public_key: str = self._key.public_key.decode()
        except (nkeys.NkeysError, binascii.Error, ValueError) as exc:
            raise ClaimKeyError(f"not an nkey seed ({exc})") from None

    @classmethod
    def from_file(cls, path: str) -> ClaimSigner:
        try:
            seed = Path(path).read_bytes()
        except OSError as exc:
            raise ClaimKeyError(f"DOCKYARD_CLAIM_KEY: cannot read {path}: {exc.strerror}") from None
        try:
            return cls(seed)
        except ClaimKeyError as exc:
            raise ClaimKeyError(f"DOCKYARD_CLAIM_KEY: {path} holds {exc}") from None

    def headers(self, payload: bytes) -> dict[str, str]:
        """The headers that carry the payload's signature."""
        signature = base64.urlsafe_b64encode(self._key.sign(payload)).decode()  # libsodium
        return {names.CLAIM_SIGNATURE: signature, names.CLAIM_SIGNER: self.public_key}


class ClaimVerifier:
    """Checks claim answers against the scheduler's public nkey."""

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key.strip()
        self._key = Ed25519PublicKey.from_public_bytes(decode_public_key(self.public_key))

    @classmethod
    def from_setting(cls, value: str) -> ClaimVerifier:
        """The public nkey itself, or a file holding it (what DOCKYARD_CLAIM_PUBLIC_KEY says)."""
        text = value.strip()
        if not _looks_like_public_key(text):
            try:
                text = Path(value).read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not text"
                raise ClaimKeyError(
                    f"DOCKYARD_CLAIM_PUBLIC_KEY: neither a public nkey nor a readable file "
                    f"holding one ({value}: {why})"
                ) from None
        try:
            return cls(text)
        except ClaimKeyError as exc:
            raise ClaimKeyError(f"DOCKYARD_CLAIM_PUBLIC_KEY: {exc}") from None

    def problem(self, payload: bytes, headers: Mapping[str, str] | None) -> str | None:
        """None if `payload` is signed by our scheduler; else why not, as a metric label:
        `unsigned`, `unknown_signer` (another key), `bad_signature` (forged or altered)."""
        headers = headers or {}
        signature = headers.get(names.CLAIM_SIGNATURE)
        if not signature:
            return "unsigned"
        if headers.get(names.CLAIM_SIGNER) != self.public_key:
            return "unknown_signer"
        try:
            self._key.verify(base64.urlsafe_b64decode(signature), payload)
        except (InvalidSignature, binascii.Error, ValueError):
            return "bad_signature"
        return None


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public nkey (`N...`, `U...`, any role); ClaimKeyError if not one."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise ClaimKeyError("not a public nkey (not base32)") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise ClaimKeyError("not a public nkey (a seed, or another kind of key?)")
    if nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ClaimKeyError("not a public nkey (its checksum is wrong)")
    return raw[1:33]


def _looks_like_public_key(text: str) -> bool:
    try:
        decode_public_key(text)
    except ClaimKeyError:
        return False
    return True
