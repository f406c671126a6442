"""An orchestrator process with the in-memory FakeRuntime instead of Docker, for the
control-plane benchmark: `python -m tests.benchmarks.fake_orchestrator`, configured by the
contract's variables, stopped by SIGTERM. In its own process, as in a deployment, so the
orchestrator and the scheduler side do not share one core."""

from __future__ import annotations

import asyncio
import signal

from dockyard.config import load
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.service import bootstrap
from dockyard.process import event_loop, gc_policy
from dockyard.runtime.fake import FakeRuntime


async def main() -> None:
    gc_policy.apply()  # as run_orchestrator does
    settings = load()
    config = OrchestratorConfig.from_settings(settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bootstrap(settings, config=config, runtime=FakeRuntime(images=["busybox"])) as o:
        await o.run(stop)


if __name__ == "__main__":
    event_loop.run(main())
