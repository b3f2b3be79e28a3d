"""Parlor in another process: the command that runs `parlor` from this environment, and
waiting for such a node to be ready, and to stop."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


def parlor_command() -> list[str]:
    """`parlor` as installed beside this Python, on the PATH, or as its module."""
    script = Path(sys.executable).parent / "parlor"
    if script.exists():
        return [str(script)]
    found = shutil.which("parlor")
    return [found] if found else [sys.executable, "-m", "signaling.cli"]


async def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the node at `url` answers /readyz (its log in the failure if it exits first)."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            assert process.poll() is None, log.read_text()
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"the node at {url} did not become ready"
            await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM (the node shuts down in order), SIGKILL if it takes longer than `timeout`."""
    process.terminate()
    try:
        await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)
