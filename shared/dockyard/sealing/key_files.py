"""DOCKYARD_SECRETS_KEY: one or more key files, `new,old`, each 32 random bytes in base64
(what `openssl rand -base64 32` prints). Errors name the file, never its content."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from dockyard.sealing.envelope import KEY_BYTES, KeyRing, SealingKey


class KeyFileError(ValueError):
    """Raised when a file named in DOCKYARD_SECRETS_KEY is missing, unreadable or no key."""


def new_key_text() -> str:
    """A fresh key as its file holds it (base64 and a newline)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"


def parse_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise KeyFileError(
            f"DOCKYARD_SECRETS_KEY: {where} does not hold a key: it needs {KEY_BYTES} random "
            "bytes in base64, as `openssl rand -base64 32` prints them"
        )
    return raw


def load_key_ring(setting: str, holder: str) -> KeyRing:
    """The ring of the comma-separated files in `setting`: seal with the first."""
    paths = [part.strip() for part in setting.split(",") if part.strip()]
    if not paths:
        raise KeyFileError("DOCKYARD_SECRETS_KEY names no file")
    keys = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not text"
            raise KeyFileError(f"DOCKYARD_SECRETS_KEY: cannot read {path}: {reason}") from None
        keys.append(SealingKey(parse_key(text, path)))
    return KeyRing(keys, holder)
