"""Recordings when things fail (SPEC §10).

- A full recordings store never ends a call: a node whose recordings directory is a 256 kB
  tmpfs (ENOSPC for real) keeps its call going, marks the recording incomplete, and says so
  in the audit chain and on the staff event stream (the console's alert). The node runs as
  `parlor serve` in a private mount namespace (`unshare -m`, root), where the tmpfs is
  mounted over its recordings directory.
- A node killed mid-call (SIGKILL) finishes the recording it was making when it starts
  again: playable from what the record file holds, marked incomplete (`truncated`).

The tests drive the node over HTTP and real aiortc clients over loopback.
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
from tests.conftest import SECRET, make_visit, recordings_done, seed
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


def node_process(tmp_path: Path, port: int, mount: str | None = None) -> subprocess.Popen[bytes]:
    """`parlor serve` on `port` with its database and recordings under `tmp_path`; with
    `mount` (a shell command), in a private mount namespace where that runs first."""
    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    env = {
        **os.environ, "PARLOR_DB": str(tmp_path / "parlor.db"), "PARLOR_SECRET": SECRET.decode(),
        "PARLOR_RECORDINGS": str(recordings), "PARLOR_ICE_ADDRESSES": "127.0.0.1",
        "PARLOR_ICE_SERVERS": "[]", "PARLOR_LOG_LEVEL": "WARNING", "PARLOR_TICK_SECONDS": "0.1",
    }  # fmt: skip
    serve = [*parlor_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command = (
        serve
        if mount is None
        else ["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join(serve)}"]
    )
    with (tmp_path / "node.log").open("ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )


@pytest.fixture
async def small_disk_node(tmp_path: Path) -> AsyncIterator[Node]:
    need(PRIVATE_TMPFS)
    port = free_port()
    mount = (
        f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {shlex.quote(str(tmp_path / 'recordings'))}"
    )
    process = node_process(tmp_path, port, mount)
    http = aiohttp.ClientSession()
    node = Node(f"http://127.0.0.1:{port}", http)
    try:
        await wait_ready(node.url, process, tmp_path / "node.log")
        yield node
    finally:
        await http.close()
        await stop(process, 15)


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

    [recording] = await recordings_done(node, visit["id"])  # type: ignore[arg-type]
    assert recording["incomplete_reason"] == "disk-full" and recording["complete"] is False
    # The store is full: the playable file may not fit either, and then it is said so.
    assert recording["status"] in ("finalized", "failed"), recording
    status, report = await node.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and report["ok"], report


async def test_a_node_killed_mid_call_finishes_its_recording_when_it_starts_again(tmp_path):
    port = free_port()
    process = node_process(tmp_path, port)
    http = aiohttp.ClientSession()
    node = Node(f"http://127.0.0.1:{port}", http)
    try:
        await wait_ready(node.url, process, tmp_path / "node.log")
        await seed(node)  # type: ignore[arg-type]
        visit = await make_visit(node, ["C1"])  # type: ignore[arg-type]
        kiosk = node.client(visit["join"]["device"]["token"], visit["id"])
        family = node.client(visit["join"]["C1"]["token"], visit["id"])
        try:
            await kiosk.connect()
            await family.connect()
            await family.wait_frames("video", 15)
            await kiosk.wait_frames("video", 15)
            process.kill()  # no shutdown: the recorder never writes its END record
            await asyncio.to_thread(process.wait)
        finally:
            await family.close()
            await kiosk.close()
        [rec] = [p for p in (tmp_path / "recordings").iterdir() if p.suffix == ".rec"]
        assert rec.stat().st_size > 10_000  # what was flushed before the kill

        process = node_process(tmp_path, port)
        await wait_ready(node.url, process, tmp_path / "node.log")
        [recording] = await recordings_done(node, visit["id"])  # type: ignore[arg-type]
        assert recording["status"] == "finalized", recording
        assert recording["incomplete_reason"] == "truncated" and recording["duration_seconds"] > 0.5
        status, report = await node.api("GET", "/api/v1/audit/verify", token="auditor")
        assert status == 200 and report["ok"], report
    finally:
        await http.close()
        await stop(process, 15)
