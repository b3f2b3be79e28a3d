"""Fixtures of the hardening suite (issue #7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.hardening.wire import UNLIMITED, running


@pytest.fixture
async def open_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server whose rate limits never trigger (see wire.UNLIMITED)."""
    async with running(tmp_path, **UNLIMITED) as srv:
        yield srv
