"""`dockyard up`'s claim key: made once, the seed only for the scheduler, its public half for
the orchestrator and for other orchestrator hosts (`claim.pub`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.bus.signing import ClaimSigner, ClaimVerifier
from dockyard.stack.claim_keys import (
    CLAIM_PUBLIC,
    CLAIM_SEED,
    ClaimKeyUnusable,
    claim_env,
    new_claim_seed,
)


class Files:
    """The credentials directory as stack.data_dir's Credentials answers (without its checks)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def get_or_create(self, name: str, make: Callable[[], str] | None = None) -> str:
        target = self.path / name
        if not target.exists():
            assert make is not None
            target.write_text(make())
        return target.read_text()


def test_up_makes_the_claim_key_once_and_hands_out_only_what_each_service_needs(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    first = claim_env({}, files)
    assert set(first) == {"scheduler", "orchestrator"}
    seed_path = first["scheduler"]["DOCKYARD_CLAIM_KEY"]
    assert seed_path == str(tmp_path / CLAIM_SEED)
    public = first["orchestrator"]["DOCKYARD_CLAIM_PUBLIC_KEY"]
    assert ClaimSigner.from_file(seed_path).public_key == public
    assert ClaimVerifier.from_setting(str(tmp_path / CLAIM_PUBLIC)).public_key == public
    assert claim_env({}, files) == first  # the next start: the same key


def test_up_uses_a_claim_key_given_and_refuses_one_it_cannot_read(tmp_path: Path) -> None:
    given = tmp_path / "mine.seed"
    given.write_text(new_claim_seed())
    files = Files(tmp_path / "credentials")
    keys = claim_env({"DOCKYARD_CLAIM_KEY": str(given)}, files)
    assert keys["scheduler"]["DOCKYARD_CLAIM_KEY"] == str(given)
    expected = ClaimSigner.from_file(str(given)).public_key
    assert keys["orchestrator"]["DOCKYARD_CLAIM_PUBLIC_KEY"] == expected
    with pytest.raises(ClaimKeyUnusable, match="DOCKYARD_CLAIM_KEY"):
        claim_env({"DOCKYARD_CLAIM_KEY": str(tmp_path / "missing")}, files)
    given.write_text("not a seed")
    with pytest.raises(ClaimKeyUnusable, match="not an nkey seed"):
        claim_env({"DOCKYARD_CLAIM_KEY": str(given)}, files)
