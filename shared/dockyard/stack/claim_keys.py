"""`dockyard up`'s claim key: the scheduler signs claim answers with it, orchestrators check.

Made once, at the first start, in `<data-dir>/credentials/` (0600): `claim.seed`, the ed25519
nkey seed, and `claim.pub`, its public nkey, which another orchestrator host needs (as
`DOCKYARD_CLAIM_PUBLIC_KEY`). A seed given in `DOCKYARD_CLAIM_KEY` is used instead. Only the
scheduler is told where the seed is; the orchestrator gets its public key itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol

import nkeys

CLAIM_SEED: Final = "claim.seed"
CLAIM_PUBLIC: Final = "claim.pub"


class CredentialFiles(Protocol):
    def file(self, name: str) -> Path: ...

    def get_or_create(self, name: str, make: Callable[[], str] | None = None) -> str: ...


class ClaimKeyUnusable(RuntimeError):
    """Raised when the claim key `dockyard up` is given or finds cannot be read."""


def new_claim_seed() -> str:
    """A fresh nkey seed of the server role (`SN...`): `nk -gen server` makes the same kind."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)).decode()


def public_key_of(seed: str) -> str:
    try:
        return str(nkeys.from_seed(seed.strip().encode()).public_key.decode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise ClaimKeyUnusable(f"the claim key is not an nkey seed ({exc})") from None


def claim_env(env: Mapping[str, str], credentials: CredentialFiles) -> dict[str, dict[str, str]]:
    """The claim variables of each service that needs one, by service name."""
    path = env.get("DOCKYARD_CLAIM_KEY")
    if path:
        try:
            seed = Path(path).read_text()
        except OSError as exc:
            raise ClaimKeyUnusable(f"DOCKYARD_CLAIM_KEY: cannot read {path}: {exc}") from None
    else:
        seed = credentials.get_or_create(CLAIM_SEED, new_claim_seed)
        path = str(credentials.file(CLAIM_SEED))
    public = public_key_of(seed)  # the local orchestrator's, whatever the environment says
    if not env.get("DOCKYARD_CLAIM_KEY"):
        credentials.get_or_create(CLAIM_PUBLIC, lambda: public + "\n")
    return {
        "scheduler": {"DOCKYARD_CLAIM_KEY": path},
        "orchestrator": {"DOCKYARD_CLAIM_PUBLIC_KEY": public},
    }
