"""Fixtures of the browser tests against the real server: one Chromium per module and a
seeded server (tests/conftest.py binds it to a known port, so the links it writes work)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.conftest import Server, make_config, seed, start_server, stop_server
from tests.harness.chromium import launch_chromium


async def seeded_server(tmp_path: Path, **config: Any) -> Server:
    srv = await start_server(make_config(tmp_path, **config))
    await seed(srv)
    return srv


@pytest_asyncio.fixture(loop_scope="module")
async def live(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await seeded_server(tmp_path)
    try:
        yield srv
    finally:
        await stop_server(srv)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with launch_chromium() as launched:
        yield launched


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium; the pages a test opened are closed after it (their calls end)."""
    before = set(chromium.contexts)
    yield chromium
    for context in set(chromium.contexts) - before:
        await context.close()


def media_faults(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What went wrong on the server side: any error (e.g. a failed
    renegotiation), and any warning of aiortc or the relay (e.g. a transport
    that died parsing a client's RTP header extensions)."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
        or (r.levelno >= logging.WARNING and r.name.split(".")[0] in ("aiortc", "relay"))
    ]
