"""Sealing one secret value: AEAD (ChaCha20-Poly1305) bound to where the value belongs.

A sealed value is text, self-describing and versioned: `sealed:v1:<key-id>:<base64url>`, the
base64 holding a fresh 12-byte nonce and the ciphertext with its tag. The associated data
names the job (or schedule) and the env key, so a sealed value copied into another job, or
under another key, does not open. The key id is a digest of the key, never the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

PREFIX: Final = "sealed:"
VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class SealError(ValueError):
    """Raised when a sealed value cannot be opened; the message is for a person and never
    holds the value, the key or the ciphertext."""


class UnknownKey(SealError):
    """Raised when the value was sealed with a key this process does not have."""


class SealingKey:
    """One 32-byte key and its public id (16 hex digits of its SHA-256)."""

    __slots__ = ("_aead", "id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secrets key is {KEY_BYTES} bytes, not {len(key)}")
        self.id = hashlib.sha256(b"dockyard secrets key id\0" + key).hexdigest()[:16]
        self._aead = ChaCha20Poly1305(key)

    def __repr__(self) -> str:
        return f"SealingKey(id={self.id!r})"  # never the key

    def seal(self, plaintext: str, ad: str, nonce: bytes | None = None) -> str:
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        box = nonce + self._aead.encrypt(nonce, plaintext.encode(), ad.encode())
        body = base64.urlsafe_b64encode(box).decode().rstrip("=")
        return f"{PREFIX}{VERSION}:{self.id}:{body}"

    def open_box(self, box: bytes, ad: str) -> str:
        try:
            plain = self._aead.decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], ad.encode())
        except InvalidTag:
            raise SealError(
                "a sealed secret does not open: it was altered, or belongs to another job"
            ) from None
        return plain.decode()


class KeyRing:
    """The keys of DOCKYARD_SECRETS_KEY: seal with the first, open with any (rotation)."""

    __slots__ = ("holder", "keys")

    def __init__(self, keys: Sequence[SealingKey], holder: str = "process") -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.keys = tuple(keys)
        self.holder = holder  # who says it lacks a key: "orchestrator", "scheduler"

    def __repr__(self) -> str:
        return f"KeyRing(ids={[key.id for key in self.keys]!r})"

    @classmethod
    def of(cls, *raw: bytes, holder: str = "process") -> KeyRing:
        return cls([SealingKey(key) for key in raw], holder)

    def seal(self, plaintext: str, ad: str) -> str:
        return self.keys[0].seal(plaintext, ad)

    def open(self, sealed: str, ad: str) -> str:
        key_id, box = _parse(sealed)
        for key in self.keys:
            if key.id == key_id:
                return key.open_box(box, ad)
        raise UnknownKey(f"its secrets were sealed with a key this {self.holder} does not have")


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def _parse(sealed: str) -> tuple[str, bytes]:
    parts = sealed.split(":")
    if len(parts) != 4 or parts[0] + ":" != PREFIX:
        raise SealError("a sealed secret is malformed")
    if parts[1] != VERSION:
        raise SealError(f"a sealed secret has version {parts[1][:8]!r}, which is not known here")
    try:
        box = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4))
    except (binascii.Error, ValueError):
        raise SealError("a sealed secret is malformed") from None
    if len(box) < NONCE_BYTES + 16:
        raise SealError("a sealed secret is malformed")
    return parts[2], box
