"""A node cut off from PostgreSQL answers `unavailable` on every path (issue #15, item 5),
and the end of a session that ended meanwhile is recorded, with its real reason, once the
node is back.

Node A reaches the database through a proxy the test cuts (tests/cluster/conftest.py
`cut_off`); B stays on it.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from signaling import keys as K
from tests.cluster.conftest import client, directive_body, ended_record, ready, wait_for
from tests.conftest import make_visit, seed

pytestmark = pytest.mark.cluster


async def test_every_path_of_a_cut_off_node_says_unavailable(cut_off):
    a, b, proxy = cut_off
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])
    kiosk = client(a, visit, "device")
    assert (await kiosk.connect(offer=False))["type"] == "joined"
    proxy.cut()
    await wait_for(lambda: not ready(a), timeout=2)
    staff = {"Authorization": f"Bearer {a.token()}"}
    try:
        for method, path, body in (
            ("GET", "/api/v1/directives", None),
            ("GET", "/api/v1/visits", None),
            ("POST", "/api/v1/directives", directive_body("contact:C1")),
            ("POST", "/api/v1/facilities", {"id": "F9", "name": "West"}),
        ):
            async with a.http.request(method, a.url + path, json=body, headers=staff) as answer:
                payload = await answer.json()
                assert (answer.status, payload["error"]["code"]) == (503, "unavailable"), path
                assert int(answer.headers["Retry-After"]) >= 1, path
        status, refused = await a.api(
            "POST", "/api/v1/tokens/refresh", {}, token=visit["join"]["C1"]["token"]
        )
        assert (status, refused["error"]["code"]) == (503, "unavailable")

        c1 = client(a, visit, "C1")
        answer = await c1.connect(offer=False)
        await c1.close()
        assert (answer["type"], answer["code"], c1.close_code) == ("error", "unavailable", 4503)

        # The staff event stream, asked to replay from the start, cannot read the log.
        ws_url = a.url.replace("http", "ws", 1) + "/api/v1/events"
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "auth", "token": a.token(), "after": 0})
            frames = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            assert frames[-1]["type"] == "error" and frames[-1]["code"] == "unavailable"
            assert ws.close_code == 4503

        # The kiosk leaves while A is cut off: its end is kept, and written once A is back.
        await kiosk.close()
    finally:
        proxy.restore()
    await wait_for(lambda: ready(a), timeout=10)
    record = await ended_record(b, kiosk.joined["session"], timeout=10)
    assert record.end_reason == "left"  # its real reason, not the reconnect's "error"
    assert len(a.app[K.ENFORCER].backlog) == 0
