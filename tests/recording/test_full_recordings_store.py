"""A full recordings store never ends a call (SPEC §10): a node whose recordings directory is
a 256 kB tmpfs (ENOSPC for real) keeps its call going, marks the recording incomplete, and
says so in the audit chain and on the staff event stream (the console's alert).

The node runs as `parlor serve` in a private mount namespace (`unshare -m`, root), where the
tmpfs is mounted over its recordings directory; the test drives it over HTTP and real
aiortc clients over loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.kiosk import ParlorClient
from signaling.tokens import Tokens
from tests.conftest import SECRET, make_visit, seed
from tests.harness.ports import free_port
from tests.harness.processes import parlor_command, stop, wait_ready
from tests.harness.system import Requirement, need

SIZE, FPS = (320, 240), 15


def _private_tmpfs() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("unshare") is None:
        return "no unshare"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True, timeout=10,
    )  # fmt: skip
    return None if probe.returncode == 0 else probe.stderr.decode(errors="replace").strip()


PRIVATE_TMPFS = Requirement(
    "private-tmpfs", "root with unshare, to mount a small private tmpfs",
    "run the suite as root with util-linux (bash .ci/run does)", _private_tmpfs,
)  # fmt: skip


class Node:
    """A `parlor serve` in another process, driven like tests/conftest.py's `Server`."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http, self.tokens = url, http, Tokens(SECRET)

    async def api(
        self, method: str, path: str, body: Any = None, *, token: str = "operator"
    ) -> tuple[int, Any]:
        if token in ("operator", "supervisor", "auditor"):
            sub = "auditor:default" if token == "auditor" else f"operator:{token}-default"
            token = self.tokens.issue(sub, token, 3600)
        async with self.http.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status, await response.json(content_type=None)

    def client(self, token: str, visit: str) -> ParlorClient:
        return ParlorClient(self.url, token, visit, size=SIZE, fps=FPS)


@pytest.fixture
async def small_disk_node(tmp_path: Path) -> AsyncIterator[Node]:
    need(PRIVATE_TMPFS)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    port = free_port()
    env = {
        **os.environ, "PARLOR_DB": str(tmp_path / "parlor.db"), "PARLOR_SECRET": SECRET.decode(),
        "PARLOR_RECORDINGS": str(recordings), "PARLOR_ICE_ADDRESSES": "127.0.0.1",
        "PARLOR_ICE_SERVERS": "[]", "PARLOR_LOG_LEVEL": "WARNING", "PARLOR_TICK_SECONDS": "0.1",
    }  # fmt: skip
    serve = [*parlor_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    mount = f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {shlex.quote(str(recordings))}"
    log_path = tmp_path / "node.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join(serve)}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    http = aiohttp.ClientSession()
    node = Node(f"http://127.0.0.1:{port}", http)
    try:
        await wait_ready(node.url, process, log_path)
        yield node
    finally:
        await http.close()
        await stop(process, 15)
        log.close()


async def events_of(node: Node, action: str) -> list[dict[str, Any]]:
    status, events = await node.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    assert status == 200, events
    return [e for e in events if e["action"] == action]


async def test_a_full_recordings_store_keeps_the_call_and_marks_the_recording(small_disk_node):
    node = small_disk_node
    await seed(node)  # type: ignore[arg-type]  # a Server in all that seeding needs
    visit = await make_visit(node, ["C1"])  # type: ignore[arg-type]
    alerts = await node.http.ws_connect(node.url.replace("http", "ws") + "/api/v1/events")
    await alerts.send_json(
        {"type": "auth", "token": node.tokens.issue("operator:o", "operator", 600)}
    )
    assert (await alerts.receive_json(timeout=5))["type"] == "ready"
    kiosk = node.client(visit["join"]["device"]["token"], visit["id"])
    family = node.client(visit["join"]["C1"]["token"], visit["id"])
    try:
        assert (await kiosk.connect())["recorded"] is True
        await family.connect()
        await family.wait_frames("video", 5)
        deadline = time.monotonic() + 60
        while not await events_of(node, "recording.incomplete"):
            assert time.monotonic() < deadline, "the recording never filled the 256 kB store"
            await asyncio.sleep(0.25)
        [incomplete] = await events_of(node, "recording.incomplete")
        assert incomplete["data"]["reason"] == "disk-full"

        seen = {c: c.received.frames["video"] for c in (kiosk, family)}
        for client in (kiosk, family):  # the call goes on after the store filled
            await client.wait_frames("video", seen[client] + 15, timeout=10)
            assert not client.closed.is_set()
        status, sessions = await node.api("GET", "/api/v1/sessions", token="auditor")
        assert status == 200 and len(sessions) == 2

        pushed = []
        while not any(e["event"]["action"] == "recording.incomplete" for e in pushed):
            pushed.append(json.loads((await alerts.receive(timeout=5)).data))
    finally:
        await family.leave()
        await kiosk.leave()
        await alerts.close()

    deadline = time.monotonic() + 60
    while True:
        status, [recording] = await node.api(
            "GET", f"/api/v1/recordings?visit={visit['id']}", token="auditor"
        )
        if recording["status"] != "recording":
            break
        assert time.monotonic() < deadline, recording
        await asyncio.sleep(0.25)
    assert recording["incomplete_reason"] == "disk-full" and recording["complete"] is False
    # The store is full: the playable file may not fit either, and then it is said so.
    assert recording["status"] in ("finalized", "failed"), recording
    status, report = await node.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and report["ok"], report
