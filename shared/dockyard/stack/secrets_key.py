"""`dockyard up`'s secrets key: the scheduler seals secret values with it, orchestrators open
them. Made once, at the first start, as `<data-dir>/credentials/secrets.key` (0600); a
DOCKYARD_SECRETS_KEY given to `dockyard up` (`new,old` files) is used instead. Only the
scheduler and the orchestrator are told where it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dockyard.sealing.key_files import KeyFileError, load_key_ring, new_key_text
from dockyard.stack.claim_keys import CredentialFiles

SECRETS_KEY: Final = "secrets.key"


class SecretsKeyUnusable(RuntimeError):
    """Raised when the secrets key `dockyard up` is given or finds is no key."""


def secrets_key_env(
    env: Mapping[str, str], credentials: CredentialFiles
) -> dict[str, dict[str, str]]:
    """DOCKYARD_SECRETS_KEY for each service that needs it, by service name."""
    setting = env.get("DOCKYARD_SECRETS_KEY")
    if not setting:
        credentials.get_or_create(SECRETS_KEY, new_key_text)
        setting = str(credentials.file(SECRETS_KEY))
    try:
        load_key_ring(setting, "`dockyard up`")  # refuse at start what the services would
    except KeyFileError as error:
        raise SecretsKeyUnusable(str(error)) from None
    return {name: {"DOCKYARD_SECRETS_KEY": setting} for name in ("scheduler", "orchestrator")}
