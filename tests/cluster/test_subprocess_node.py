"""A second node in its own process (`parlor serve`), as a real deployment runs it: a directive
issued there ends a call relayed by this process's node, and a participant reaching it for a
visit placed here is redirected here."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.bus import ws_url
from signaling.kiosk import ParlorClient
from tests.cluster.conftest import (
    close_all,
    directive_body,
    ended_record,
    in_call,
    start_node,
    wait_for,
)
from tests.conftest import SECRET, Server, make_visit, seed, stop_server
from tests.harness.ports import free_port
from tests.harness.processes import parlor_command, stop, wait_ready

pytestmark = pytest.mark.cluster


class Remote:
    """A node in a subprocess, driven over HTTP with tokens signed by the shared secret."""

    def __init__(self, url: str, local: Server, process: subprocess.Popen[bytes]) -> None:
        self.url, self.local, self.process = url, local, process

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        token = self.local.token("operator:remote-op", "operator")
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method, self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            return response.status, await response.json(content_type=None)


@pytest.fixture
async def mixed(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Server, Remote]]:
    a = await start_node(tmp_path, pg_url, "A")
    port = free_port()
    env = {
        **os.environ, "PARLOR_DB": pg_url, "PARLOR_SECRET": SECRET.decode(), "PARLOR_NODE_ID": "B",
        "PARLOR_ICE_ADDRESSES": "127.0.0.1", "PARLOR_ICE_SERVERS": "[]", "PARLOR_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    log = (tmp_path / "node-b.log").open("wb")
    process = subprocess.Popen(
        [*parlor_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    remote = Remote(f"http://127.0.0.1:{port}", a, process)
    try:
        await wait_ready(remote.url, process, tmp_path / "node-b.log")
        yield a, remote
    finally:
        await stop(process)
        log.close()
        await stop_server(a)


async def test_a_node_in_another_process_ends_and_redirects_calls_of_this_one(mixed):
    a, b = mixed
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        status, sessions = await b.api("GET", "/api/v1/sessions")
        assert status == 200 and {s["node"] for s in sessions} == {"A"} and len(sessions) == 2

        c2 = ParlorClient(b.url, visit["join"]["C2"]["token"], visit["id"], size=(160, 120), fps=10)
        first = await c2.connect(offer=False)
        await c2.close()
        assert (
            first["type"] == "redirect" and first["url"] == ws_url(a.url) and c2.close_code == 4307
        )

        started = time.monotonic()
        status, directive = await b.api("POST", "/api/v1/directives", directive_body("contact:C1"))
        assert status == 201, directive
        ended_at = await wait_for(lambda: c1.closed.is_set(), timeout=5)
        print(f"kill across processes: {1000 * (ended_at - started):.1f} ms from POST on B")
        assert c1.close_code == 4403 and c1.terminated["directive"]["id"] == directive["id"]
        assert (
            await ended_record(a, c1.joined["session"])
        ).end_reason == f"directive:{directive['id']}"
        assert not kiosk.closed.is_set()
    finally:
        await close_all([kiosk, c1])
