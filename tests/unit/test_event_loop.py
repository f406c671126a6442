"""Services run on uvloop where it is installed, and on asyncio's loop otherwise."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest
import uvloop

from dockyard.process import event_loop, gc_policy


def test_run_returns_the_result_on_uvloop() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(main()).startswith("uvloop")


def test_run_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed

    async def main() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert not event_loop.run(main()).__module__.startswith("uvloop")


async def test_the_tests_themselves_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_the_gc_policy_collects_seldom_and_never_over_startup() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        gc_policy.apply()
        assert gc.get_threshold() == (gc_policy.YOUNG_GENERATION, 10, 10)
        assert gc.get_freeze_count() > 0  # startup's objects are out of every scan
    finally:
        gc.set_threshold(*before)
