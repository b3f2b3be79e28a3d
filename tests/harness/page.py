"""A page in some browser, as the harness drives it: `tests.harness.firefox.Firefox` (its one
window) and `tests.harness.chromium.Watched` (a Playwright page) both are one, so a flow
written once (tests/harness/callpage.py) runs in either."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Protocol


class Page(Protocol):
    async def open(self, url: str) -> None: ...

    async def evaluate(self, function: str, *args: Any) -> Any:
        """Call the JavaScript function expression `function` with `args`; a returned
        promise is awaited."""
        ...

    async def click(self, selector: str) -> None: ...

    async def screenshot(self, name: str) -> Path: ...

    async def problems(self, allow: str | None = None) -> list[str]: ...


async def wait_for(
    page: Page, function: str, *args: Any, timeout: float = 15.0, interval: float = 0.1
) -> Any:
    """Poll `page.evaluate(function, *args)` until its result is truthy; return that result.
    TimeoutError (with the last result) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await page.evaluate(function, *args)
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{function!r} is still {result!r} after {timeout} s")
        await asyncio.sleep(interval)
