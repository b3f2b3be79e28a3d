"""A kiosk's presence connection on /ws (SPEC §5; signaling/presence.py): the kiosk says it
is there and sends heartbeats; staff see it online, in a call, offline since when; the
transitions (not the heartbeats) are audit events on the staff event stream.

Real WebSockets against a real server; the heartbeat is 1 s here, so "offline within
2.5 beats" is seconds, not the 25 s of the default.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from signaling import keys as K
from signaling.kiosk import PresenceLink
from tests.conftest import make_config, make_visit, seed, start_server, stop_server, wait_until

HEARTBEAT = 1.0


async def device(srv: Any, device_id: str) -> dict[str, Any]:
    status, devices = await srv.api("GET", "/api/v1/devices", token="auditor")
    assert status == 200
    return next(d for d in devices if d["id"] == device_id)


async def presence_of(srv: Any, device_id: str) -> str | None:
    found = (await device(srv, device_id))["presence"]
    return None if found is None else found["state"]


async def test_online_heartbeats_in_a_call_and_offline_after_a_close(tmp_path):
    srv = await start_server(make_config(tmp_path, kiosk_heartbeat_seconds=HEARTBEAT))
    links: list[PresenceLink] = []
    try:
        await seed(srv)
        token = srv.token("device:K1", "kiosk")
        link = PresenceLink(srv.url, token)
        links.append(link)
        present = await link.start()
        assert present is not None
        assert present["device"] == "K1"
        assert present["heartbeat_seconds"] == HEARTBEAT
        assert present["timeout_seconds"] == 2.5 * HEARTBEAT
        assert await presence_of(srv, "K1") == "online"
        online = (await device(srv, "K1"))["presence"]
        assert online["node"] == srv.app[K.CONFIG].node_id and online["since"]
        await wait_until(lambda: link.beats >= 3, timeout=10)  # each heartbeat is echoed

        # In a call: the kiosk's participant session shows as its call; the next visit too.
        visit = await make_visit(srv, ["C1"])
        await make_visit(srv, ["C1"], starts_in=7200)
        kiosk = srv.client(visit["join"]["device"]["token"], visit["id"], video=None, audio=False)
        assert (await kiosk.connect(offer=False))["type"] == "joined"
        listed = await device(srv, "K1")
        assert listed["in_call"] == visit["id"]
        assert listed["next_visit"]["id"] == visit["id"]  # the one under way comes first
        await kiosk.close()

        # A clean close: offline after one heartbeat interval (a quick reconnect writes nothing).
        await link.stop()
        closed_at = time.monotonic()
        deadline = closed_at + 3 * HEARTBEAT + 2
        while await presence_of(srv, "K1") != "offline":
            assert time.monotonic() < deadline, "the kiosk is still online"
            await asyncio.sleep(0.1)
        gone = (await device(srv, "K1"))["presence"]
        assert gone["last_seen"] <= gone["since"]
        assert (await device(srv, "K1"))["next_visit"]["id"] == visit["id"]
        _, events = await srv.api("GET", "/api/v1/audit?limit=5000", token="auditor")
        transitions = [(e["action"], e.get("data", {}).get("why")) for e in events
                       if e["action"] in ("device.online", "device.offline")]  # fmt: skip
        assert transitions == [("device.online", None), ("device.offline", "closed")]
    finally:
        for each in links:
            await each.stop()
        await stop_server(srv)


async def test_a_silent_kiosk_is_dropped_and_offline_and_a_quick_reconnect_writes_nothing(tmp_path):
    srv = await start_server(make_config(tmp_path, kiosk_heartbeat_seconds=HEARTBEAT))
    try:
        await seed(srv)
        token = srv.token("device:K1", "kiosk")
        async with aiohttp.ClientSession() as http:
            # A kiosk that reconnects within the grace: one online, no offline.
            for _ in range(2):
                ws = await http.ws_connect(srv.url.replace("http", "ws") + "/ws")
                await ws.send_json({"type": "presence", "token": token})
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "present"
                await ws.close()
            # Then one that says it is there and falls silent: dropped after 2.5 beats.
            ws = await http.ws_connect(srv.url.replace("http", "ws") + "/ws")
            await ws.send_json({"type": "presence", "token": token})
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "present"
            silent_since = time.monotonic()
            error = json.loads((await ws.receive(timeout=10)).data)
            assert error["code"] == "heartbeat-missed"
            await ws.receive(timeout=5)
            assert ws.close_code == 4400
            assert time.monotonic() - silent_since >= 2.5 * HEARTBEAT - 0.1
        deadline = time.monotonic() + 5
        while await presence_of(srv, "K1") != "offline":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        _, events = await srv.api("GET", "/api/v1/audit?limit=5000", token="auditor")
        transitions = [(e["action"], e["data"].get("why")) for e in events
                       if e["action"] in ("device.online", "device.offline")]  # fmt: skip
        assert transitions == [("device.online", None), ("device.offline", "heartbeat-missed")]
    finally:
        await stop_server(srv)


async def test_presence_refusals(tmp_path):
    srv = await start_server(make_config(tmp_path, kiosk_heartbeat_seconds=HEARTBEAT))
    try:
        await seed(srv)
        visit = await make_visit(srv, ["C1"])
        cases = [
            (visit["join"]["C1"]["token"], "forbidden", 4403),  # a family token
            (srv.token("operator:alice", "operator"), "forbidden", 4403),
            (srv.token("device:K-nope", "kiosk"), "unknown-device", 4403),
            ("not-a-token", "bad-token", 4401),
        ]
        async with aiohttp.ClientSession() as http:
            for token, code, close in cases:
                ws = await http.ws_connect(srv.url.replace("http", "ws") + "/ws")
                await ws.send_json({"type": "presence", "token": token})
                answer = json.loads((await ws.receive(timeout=5)).data)
                await ws.receive(timeout=5)
                assert (answer["code"], ws.close_code) == (code, close), token[:20]
            # A newer connection of the same kiosk replaces the older (4409); the newer one
            # answers heartbeats, and anything else is an error, not a close.
            token = srv.token("device:K1", "kiosk")
            old = await http.ws_connect(srv.url.replace("http", "ws") + "/ws")
            await old.send_json({"type": "presence", "token": token})
            await old.receive(timeout=5)
            new = await http.ws_connect(srv.url.replace("http", "ws") + "/ws")
            await new.send_json({"type": "presence", "token": token})
            assert json.loads((await new.receive(timeout=5)).data)["type"] == "present"
            replaced = json.loads((await old.receive(timeout=5)).data)
            await old.receive(timeout=5)
            assert (replaced["code"], old.close_code) == ("replaced", 4409)
            await new.send_json({"type": "offer", "sdp": "v=0"})
            assert json.loads((await new.receive(timeout=5)).data)["code"] == "unknown-type"
            await new.send_json({"type": "heartbeat"})
            assert json.loads((await new.receive(timeout=5)).data)["type"] == "heartbeat"
            await new.close()
    finally:
        await stop_server(srv)


async def test_parlor_kiosk_holds_its_presence_and_joins_its_visit_when_it_opens(tmp_path):
    """`parlor kiosk` without --visit: the headless kiosk says it is there, finds the visit
    open at its kiosk and joins it, and leaves after --seconds."""
    import os
    import sys
    from pathlib import Path

    srv = await start_server(make_config(tmp_path, kiosk_heartbeat_seconds=HEARTBEAT))
    try:
        await seed(srv)
        visit = await make_visit(srv, ["C1"])
        parlor = Path(sys.executable).with_name("parlor")
        command = [str(parlor)] if parlor.exists() else [sys.executable, "-m", "signaling.cli"]
        env = {**os.environ, "PARLOR_ICE_ADDRESSES": "127.0.0.1"}
        process = await asyncio.create_subprocess_exec(
            *command, "kiosk", "--server", srv.url, "--token", srv.token("device:K1", "kiosk"),
            "--seconds", "6", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while await presence_of(srv, "K1") != "online":
            assert time.monotonic() < deadline and process.returncode is None
            await asyncio.sleep(0.2)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert process.returncode == 0, err.decode()[-2000:]
        assert lines[0]["presence"]["device"] == "K1"
        joined = next(line["joined"] for line in lines if "joined" in line)
        assert joined["visit"] == visit["id"] and joined["role"] == "kiosk"
        deadline = time.monotonic() + 10
        while await presence_of(srv, "K1") != "offline":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        await stop_server(srv)
