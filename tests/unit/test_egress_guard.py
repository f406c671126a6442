"""The egress guard's life with a stand-in iptables (a script that logs its calls and fails
while a file says so): failure said once, egress refused meanwhile, recovery at a check."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dockyard.orchestrator.egress import EgressGuard
from dockyard.orchestrator.egress_rules import EgressChains

CHAINS = EgressChains.of("orc-guard")

# `-S CHAIN` lists what the last restore wrote for it; `-C` finds a hook once `-I` added it.
_SCRIPT = """#!/bin/sh
dir=$(dirname "$0")
echo "$(basename "$0") $*" >> "$dir/calls"
if [ -e "$dir/broken" ]; then echo "iptables: Permission denied (you must be root)" >&2; exit 4; fi
case "$(basename "$0")" in
  *-restore) cat > "$dir/restored"; exit 0 ;;
esac
case "$1" in
  -S) if [ "$2" = DOCKER-USER ] || [ "$2" = INPUT ]; then cat "$dir/hooks" 2>/dev/null; else
        echo "-N $2"; grep -- "^-A $2 " "$dir/restored"; fi ;;
  -C) grep -qx -- "-A $2 $3 $4" "$dir/hooks" 2>/dev/null ;;
  -I) echo "-A $2 $4 $5" >> "$dir/hooks" ;;
  -D) grep -vx -- "-A $2 $3 $4" "$dir/hooks" > "$dir/h2"; mv "$dir/h2" "$dir/hooks" ;;
esac
"""


@pytest.fixture
def iptables(tmp_path: Path) -> Path:
    for name in ("iptables", "iptables-restore"):
        path = tmp_path / name
        path.write_text(_SCRIPT)
        path.chmod(0o755)
    return tmp_path / "iptables"


def _guard(iptables: Path, deny: tuple[str, ...] | None = ("198.18.0.1",)) -> EgressGuard:
    return EgressGuard(CHAINS, deny, iptables=str(iptables))


async def test_installs_once_and_a_check_of_intact_rules_writes_nothing(iptables: Path) -> None:
    guard = _guard(iptables)
    await guard.install()
    await guard.check()

    assert guard.error is None and guard.allows_egress and guard.installs == 1
    restores = (iptables.parent / "calls").read_text().count("iptables-restore --noflush")
    assert restores == 1


async def test_failing_iptables_refuses_egress_says_so_once_and_recovers_at_a_check(
    iptables: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dockyard.orchestrator.egress")
    (iptables.parent / "broken").touch()
    guard = _guard(iptables)
    await guard.install()
    await guard.check()
    await guard.check()

    assert not guard.allows_egress and guard.error is not None
    assert "Permission denied (you must be root)" in guard.error
    unenforced = [r for r in caplog.records if "egress_unenforced" in r.getMessage()]
    assert len(unenforced) == 1

    (iptables.parent / "broken").unlink()
    await guard.check()
    assert guard.allows_egress and guard.error is None
    assert any("egress_enforced" in r.getMessage() for r in caplog.records)


async def test_a_hook_gone_is_put_back_once(iptables: Path) -> None:
    guard = _guard(iptables)
    await guard.install()
    (iptables.parent / "hooks").write_text(f"-A INPUT -j {CHAINS.input}\n")  # DOCKER-USER's gone
    await guard.check()

    hooks = (iptables.parent / "hooks").read_text().splitlines()
    assert sorted(hooks) == sorted(
        [f"-A INPUT -j {CHAINS.input}", f"-A DOCKER-USER -j {CHAINS.forward}"]
    )
    assert guard.installs == 2


async def test_none_touches_nothing_and_allows_egress(iptables: Path) -> None:
    guard = _guard(iptables, deny=None)
    await guard.install()
    await guard.check()
    await guard.remove()

    assert guard.off and guard.allows_egress
    assert not (iptables.parent / "calls").exists()


async def test_remove_takes_the_hooks_out(iptables: Path) -> None:
    guard = _guard(iptables)
    await guard.install()
    await guard.remove()

    assert (iptables.parent / "hooks").read_text() == ""
    calls = (iptables.parent / "calls").read_text()
    assert f"iptables -X {CHAINS.forward}" in calls and f"iptables -X {CHAINS.input}" in calls


async def test_chains_deleted_under_it_are_written_again_without_refusing_egress(
    iptables: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dockyard.orchestrator.egress")
    guard = _guard(iptables)
    await guard.install()
    (iptables.parent / "restored").unlink()  # `-S` of either chain now fails, as when gone
    (iptables.parent / "hooks").write_text("")

    await guard.check()

    assert guard.allows_egress and guard.installs == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("egress_rules_missing" in m for m in messages)
    assert not any("egress_unenforced" in m for m in messages)
