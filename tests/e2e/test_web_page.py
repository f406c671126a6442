"""The web page in a real headless Chromium, against the real stack: the scheduler's API and
page, its control plane, a real orchestrator running the job in Docker, and the log relay as
a process (SIGKILLed and restarted while the page tails the log).

Chromium is Debian's (`apt-get install chromium`), driven by Playwright's Python API pointed
at it with `executable_path`; no browser is downloaded. Screenshots (desktop, and 390 px
wide) go to $DOCKYARD_SCREENSHOTS, or the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.page_routes import RelayAddress
from dockyard.store.pool import create_pool
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens
from tests.support.log_relay import TOKENS, RelayProcess, eventually, free_port
from tests.support.orchestration import ControlPlane, running_orchestrator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LINES = 400
# Slow enough to watch live (about 12 s), with stderr lines among the stdout ones.
SCRIPT = (
    f"i=1; while [ $i -le {LINES} ]; do echo line $i; "
    'if [ $((i % 100)) = 0 ]; then echo "warning at $i" >&2; fi; '
    "i=$((i+1)); sleep 0.03; done"
)


def _browser_or_fail() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail("no Chromium: apt-get install -y chromium", pytrace=False)
    return async_playwright


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Any]]:
    """Scheduler (API + page) on a real port, its control plane, an orchestrator, the relay."""
    pool = await create_pool(database_url)
    async with ControlPlane(nats_url, database_url) as plane:
        # The page's relay URL is configuration, read when the app is built: the page's port
        # is chosen first, so that the relay can allow its origin.
        page_port = free_port()
        page_url = f"http://127.0.0.1:{page_port}"
        relay = RelayProcess(nats_url, database_url, origins=page_url)
        monkeypatch.setenv("DOCKYARD_LOGS_URL", relay.url)
        ctx = Context(
            store=plane.store,
            views=PgJobViews(pool),
            tokens=Tokens(TOKENS),
            page=RelayAddress(explicit=relay.url),
        )
        runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", page_port).start()
        await relay.start()
        try:
            async with running_orchestrator(nats_url):
                yield {"page_url": page_url, "relay": relay, "plane": plane}
        finally:
            await relay.kill()
            relay.log_path.unlink(missing_ok=True)
            await runner.cleanup()
            await pool.close()


def _screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DOCKYARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression (the page's CSP forbids wait_for_function's eval)."""
    await eventually(lambda: page.evaluate(expression), timeout_s=timeout_s, poll_s=0.1)


async def _seqs(page: Any) -> list[int]:
    return [
        int(s)
        for s in await page.eval_on_selector_all(".log .l", "ls => ls.map(l => l.dataset.seq)")
    ]


async def test_the_page_tails_a_job_live_through_a_relay_restart(
    stack: dict[str, Any], busybox_image: str, tmp_path: Path
) -> None:
    async_playwright = _browser_or_fail()
    shots = _screenshots(tmp_path)
    relay: RelayProcess = stack["relay"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(stack["page_url"] + "/")

            # The token prompt, kept for the session.
            await page.wait_for_selector("#token-dialog[open]")
            await page.fill("#token-input", "acme-token")
            await page.click("#token-form button[type=submit]")
            await page.wait_for_selector("#jobs-empty:not([hidden])")

            # Submit a job from the page; it opens the job's page.
            await page.fill("#submit-form input[name=image]", busybox_image)
            await page.fill("#submit-form input[name=command]", SCRIPT)
            await page.click("#submit-form button[type=submit]")
            await page.wait_for_url("**/#/jobs/*")
            job_id = page.url.rsplit("/", 1)[-1]

            # Its lines arrive live while it runs.
            await page.wait_for_selector("#job-status.running", timeout=30_000)
            await wait_until(
                page, "document.querySelectorAll('.log .l').length >= 60", timeout_s=30
            )
            assert await page.text_content("#log-state") == "live"
            await page.screenshot(path=str(shots / "job-live-desktop.png"))

            # The relay dies and comes back: the page reconnects and resumes.
            await relay.kill()
            await page.wait_for_selector("#log-state.retrying", timeout=15_000)
            before = len(await _seqs(page))
            await asyncio.sleep(1.0)
            await relay.start()
            await page.wait_for_selector("#log-state.live", timeout=30_000)

            # The end: every line once, in order, and the final status.
            await wait_until(
                page,
                "document.querySelector('#log-state').textContent.startsWith('ended')",
                timeout_s=90,
            )
            await page.wait_for_selector("#job-status.succeeded", timeout=15_000)
            seqs = await _seqs(page)
            assert seqs == list(range(1, len(seqs) + 1)), "a gap or a repeat on the page"
            assert before < len(seqs)
            texts = await page.eval_on_selector_all(
                ".log .l.stdout .t", "ts => ts.map(t => t.textContent)"
            )
            assert texts == [f"line {i}" for i in range(1, LINES + 1)]
            warnings = await page.eval_on_selector_all(
                ".log .l.stderr .t", "ts => ts.map(t => t.textContent)"
            )
            assert warnings == [f"warning at {i}" for i in range(100, LINES + 1, 100)]
            assert "ended: succeeded" in (await page.text_content("#log-state") or "")
            events = await page.eval_on_selector_all(
                "#events .type", "ts => ts.map(t => t.textContent)"
            )
            assert events[0] == "job submitted" and "job succeeded" in events
            await page.screenshot(path=str(shots / "job-ended-desktop.png"), full_page=True)

            # The list shows it finished; and the page fits a phone.
            await page.click("a.back")
            await page.wait_for_selector(f"tr[data-id='{job_id}'] .badge.succeeded")
            await page.screenshot(path=str(shots / "jobs-desktop.png"))
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=str(shots / "jobs-phone.png"), full_page=True)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the jobs list is {width}px wide on a 390px screen"
            await page.goto(f"{stack['page_url']}/#/jobs/{job_id}")
            await wait_until(
                page, "document.querySelector('#log-state').textContent.startsWith('ended')"
            )
            assert await _seqs(page) == seqs  # replayed from the store, same lines
            await page.screenshot(path=str(shots / "job-phone.png"), full_page=True)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the job page is {width}px wide on a 390px screen"
            assert problems == []
        finally:
            await browser.close()
    if os.environ.get("DOCKYARD_SCREENSHOTS") is None:
        shutil.rmtree(shots, ignore_errors=True)


# About 3 s of CPU, then 20 MiB held in /tmp for 8 s: two usage reports or more at 5 s each.
USAGE_SCRIPT = (
    "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done; head -c 20m /dev/zero > /tmp/held; sleep 8"
)


async def test_the_job_page_shows_usage_and_a_live_chart_of_cpu_and_memory(
    stack: dict[str, Any], busybox_image: str, tmp_path: Path
) -> None:
    async_playwright = _browser_or_fail()
    shots = _screenshots(tmp_path)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(stack["page_url"] + "/")
            await page.wait_for_selector("#token-dialog[open]")
            await page.fill("#token-input", "acme-token")
            await page.click("#token-form button[type=submit]")
            await page.fill("#submit-form input[name=image]", busybox_image)
            await page.fill("#submit-form input[name=command]", USAGE_SCRIPT)
            await page.click("#submit-form button[type=submit]")
            await page.wait_for_url("**/#/jobs/*")

            # While it runs: the chart appears, drawn in the page, and says it is live.
            await page.wait_for_selector("#job-status.running", timeout=30_000)
            await page.wait_for_selector("#job-usage:not([hidden])", timeout=30_000)
            assert "(live)" in (await page.text_content("#usage-legend") or "")
            drawn = await page.evaluate(
                "(() => { const c = document.querySelector('#usage-chart');"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"
            )
            assert drawn > 100, "nothing drawn on the chart"
            await page.screenshot(path=str(shots / "job-usage-live.png"))

            # Once it ended: the final figures in words, and the chart says so.
            await page.wait_for_selector("#job-status.succeeded", timeout=60_000)
            await wait_until(
                page, "document.querySelector('#usage-legend').textContent.includes('(final)')"
            )
            facts = await page.text_content("#job-facts") or ""
            assert "Usage" in facts and "CPU" in facts and "of 512" in facts
            assert int(await page.get_attribute("#usage-chart", "data-samples") or 0) >= 3
            await page.screenshot(path=str(shots / "job-usage-final.png"), full_page=True)
            assert problems == []
        finally:
            await browser.close()
