"""Recordings of real calls (SPEC §10): a social visit's call is recorded and plays back, a
privileged visit's leaves nothing on disk, reading one needs the role and a reason and is
audited, retention deletes what no hold keeps.

Real peers (aiortc clients with encoded media) through the server's relay over loopback; the
recording's file is decoded with PyAV.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from signaling import keys as K
from tests.conftest import (
    Server,
    add_minor,
    make_config,
    make_visit,
    seed,
    start_server,
    stop_server,
)
from tests.recording.conftest import decode

SIZE, FPS = (320, 240), 15
CALL_SECONDS = 4.0


async def call(
    server: Server, visit: dict[str, Any], seconds: float, during: Any = None, contact: str = "C1"
) -> dict[str, Any]:
    """The kiosk and `contact` in a call for about `seconds` (running `during()` in it, if
    given); what each was told and when."""
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], size=SIZE, fps=FPS)
    family = server.client(visit["join"][contact]["token"], visit["id"], size=SIZE, fps=FPS)
    started = time.monotonic()
    try:
        joined = [await kiosk.connect(), await family.connect()]
        for client in (kiosk, family):
            await client.wait_frames("video", 5)
            await client.wait_frames("audio", 5)
        if during is not None:
            await during()
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        await family.leave()
        await kiosk.leave()
    return {"joined": joined, "seconds": time.monotonic() - started}


async def recording_of(server: Server, visit: str, *, count: int = 1) -> list[dict[str, Any]]:
    """The visit's recordings once `count` of them are done (finalized or failed)."""
    deadline = time.monotonic() + 60
    while True:
        status, found = await server.api(
            "GET", f"/api/v1/recordings?visit={visit}", token="auditor"
        )
        assert status == 200, found
        if len(found) >= count and all(r["status"] in ("finalized", "failed") for r in found):
            return found
        assert time.monotonic() < deadline, f"recordings of {visit} not done: {found}"
        await asyncio.sleep(0.2)


async def fetch(server: Server, url: str, **headers: str) -> tuple[int, bytes, Any]:
    async with server.http.get(server.url + url, headers=headers) as response:
        return response.status, await response.read(), response.headers


async def audit(server: Server, action: str, token: str = "auditor") -> list[dict[str, Any]]:
    status, events = await server.api("GET", "/api/v1/audit?limit=5000", token=token)
    assert status == 200
    return [e for e in events if e["action"] == action]


async def test_a_social_visits_recording_plays_back_with_both_sides(server, tmp_path):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    status, state = await server.api(
        "GET", f"/api/v1/visits/{visit['id']}/state", token=visit["join"]["C1"]["token"]
    )
    assert status == 200 and state["recorded"] is True, state
    assert state["recorded_notice"] == "This call is recorded."

    outcome = await call(server, visit, CALL_SECONDS)
    assert [j["recorded"] for j in outcome["joined"]] == [True, True]

    [recording] = await recording_of(server, visit["id"])
    assert recording["status"] == "finalized" and recording["complete"], recording
    assert abs(recording["duration_seconds"] - outcome["seconds"]) < 1.0, (recording, outcome)

    status, played = await server.api(
        "POST", f"/api/v1/recordings/{recording['id']}/play", {"reason": "incident 7 review"},
        token="supervisor",
    )  # fmt: skip
    assert status == 200, played
    status, body, headers = await fetch(server, played["url"])
    assert status == 200 and headers["Content-Type"] == "video/webm"
    digest = hashlib.sha256(body).hexdigest()
    assert digest == recording["sha256"] == headers["X-Parlor-SHA256"]
    [finalized] = await audit(server, "recording.finalized")
    assert finalized["data"]["sha256"] == digest  # the chain holds the file's digest

    path = tmp_path / "played.webm"
    path.write_bytes(body)
    streams = decode(str(path))
    assert sorted(streams) == [
        "contact:C1 audio", "contact:C1 video", "device:K1 audio", "device:K1 video",
    ]  # fmt: skip
    for title, stream in streams.items():
        span = stream.pts[-1] - stream.pts[0]
        assert stream.frames > 10 and abs(span - outcome["seconds"]) < 1.0, (title, span, outcome)
        if stream.kind == "audio":
            assert stream.samples / 48000 == pytest.approx(span, abs=1.0)

    status, part, _ = await fetch(server, played["url"], Range="bytes=0-99")
    assert status == 206 and part == body[:100]  # a <video> seeks with Range requests
    assert [p["participant"] for p in played["parts"]] == ["device:K1", "contact:C1"]
    for rendition in played["parts"]:  # one participant each, on the call's timeline
        status, body, _ = await fetch(server, rendition["url"])
        assert status == 200
        path.write_bytes(body)
        assert {t.split()[0] for t in decode(str(path))} == {rendition["participant"]}

    status, report = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and report["ok"], report


async def test_calls_that_end_together_are_remuxed_a_few_at_a_time(server, monkeypatch):
    """Each remux is a Python process: when many calls end at once (a count, a lockdown)
    they wait their turn (Recordings.remuxes) instead of all starting beside the live calls.
    Here one at a time, each held half a second, for two calls that end together."""
    from signaling import recordings

    running, most = 0, 0
    real = recordings.remux_in_subprocess

    async def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.5)
            return await real(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(recordings, "remux_in_subprocess", held)
    server.app[K.RECORDINGS].remuxes = asyncio.Semaphore(1)
    await seed(server)
    north = await make_visit(server, ["C1"])
    south = await make_visit(server, ["D1"], inmate="I2", device="K2")
    await asyncio.gather(
        call(server, north, CALL_SECONDS), call(server, south, CALL_SECONDS, contact="D1")
    )
    done = [r for v in (north, south) for r in await recording_of(server, v["id"])]
    assert [r["status"] for r in done] == ["finalized", "finalized"], done
    assert most == 1


async def test_a_privileged_visit_leaves_nothing_on_disk(server, tmp_path):
    await seed(server)
    visit = await make_visit(server, ["C1"], kind="privileged")
    status, state = await server.api(
        "GET", f"/api/v1/visits/{visit['id']}/state", token=visit["join"]["C1"]["token"]
    )
    assert status == 200 and state["recorded"] is False

    async def make_it_social() -> None:  # a live visit's kind cannot change
        status, refused = await server.api(
            "POST", f"/api/v1/visits/{visit['id']}/kind", {"kind": "social"}
        )
        assert status == 409 and refused["error"]["code"] == "visit-open", refused

    outcome = await call(server, visit, 2.0, make_it_social)
    assert [j["recorded"] for j in outcome["joined"]] == [False, False]
    assert server.app[K.SESSIONS].calls == {}  # the call is over: a recording would be closing
    await server.app[K.RECORDINGS].drain()
    directory = Path(server.app[K.CONFIG].recordings)
    assert [p for p in directory.rglob("*")] == []
    status, found = await server.api("GET", "/api/v1/recordings", token="auditor")
    assert status == 200 and found == []
    assert await audit(server, "recording.started") == []


async def test_reading_a_recording_needs_the_role_and_a_reason_and_is_audited(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    await call(server, visit, 1.5)
    [recording] = await recording_of(server, visit["id"])
    play = f"/api/v1/recordings/{recording['id']}/play"

    status, refused = await server.api("POST", play, {"reason": "curious"}, token="operator")
    assert status == 403 and refused["error"]["code"] == "recordings-forbidden"
    status, _ = await server.api("GET", "/api/v1/recordings", token="operator")
    assert status == 403
    family = visit["join"]["C1"]["token"]
    status, _ = await server.api("POST", play, {"reason": "mine"}, token=family)
    assert status == 403
    for body in ({}, {"reason": "  "}, {"reason": "x" * 501}):
        status, refused = await server.api("POST", play, body, token="supervisor")
        assert status == 400, refused
    assert await audit(server, "recording.played") == []  # nothing refused is served or logged

    status, played = await server.api("POST", play, {"reason": "appeal A-1"}, token="auditor")
    assert status == 200, played
    [event] = await audit(server, "recording.played")
    assert event["actor"] == "auditor:default"
    assert (
        event["data"]["reason"] == "appeal A-1" and event["data"]["sha256"] == recording["sha256"]
    )

    grant = played["url"].split("/")[3]
    status, _ = await server.api("GET", "/api/v1/recordings", token=grant)
    assert status == 401  # a grant is no token
    forged = grant[:-2] + ("AA" if not grant.endswith("AA") else "BB")
    status, _, _ = await fetch(server, f"/recordings/media/{forged}/call")
    assert status == 403

    status, _ = await server.api(
        "PATCH", "/api/v1/facilities/F1", {"operators_play_recordings": True}, token="operator"
    )
    assert status == 403  # the policy is a supervisor's
    status, _ = await server.api(
        "PATCH", "/api/v1/facilities/F1", {"operators_play_recordings": True}, token="supervisor"
    )
    assert status == 200
    status, exported = await server.api(
        "POST", f"/api/v1/recordings/{recording['id']}/export", {"reason": "court order 12"},
        token="operator",
    )  # fmt: skip
    assert status == 200, exported
    manifest = exported["manifest"]
    assert manifest["sha256"] == recording["sha256"] and manifest["reason"] == "court order 12"
    [finalized] = await audit(server, "recording.finalized")
    assert manifest["audit"] == {"seq": finalized["seq"], "hash": finalized["hash"]}
    status, body, headers = await fetch(server, exported["url"])
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    assert hashlib.sha256(body).hexdigest() == headers["X-Parlor-SHA256"] == recording["sha256"]
    [event] = await audit(server, "recording.exported")
    assert event["actor"] == "operator:operator-default"


@pytest.fixture
async def clocked(tmp_path: Path):
    """A server whose clock a test moves forward (`server.later(seconds)`)."""
    offset = [0.0]
    server = await start_server(make_config(tmp_path), clock=lambda: time.time() + offset[0])
    server.later = lambda seconds: offset.__setitem__(0, offset[0] + seconds)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await stop_server(server)


async def test_retention_deletes_and_a_hold_keeps_until_released(clocked):
    server = clocked
    await seed(server)
    status, _ = await server.api(
        "PATCH", "/api/v1/facilities/F1", {"recording_retention_days": 2}, token="supervisor"
    )
    assert status == 200
    visit = await make_visit(server, ["C1"])
    await call(server, visit, 1.0)
    await recording_of(server, visit["id"])
    await call(server, visit, 1.0)  # a second call of the visit: a second recording
    kept, gone = await recording_of(server, visit["id"], count=2)
    directory = Path(server.app[K.CONFIG].recordings)
    files = sorted(os.listdir(directory))
    assert len(files) == 2 * 4  # each: the record file, the call file, a rendition per side

    status, refused = await server.api(
        "POST", f"/api/v1/recordings/{kept['id']}/hold", {"reason": "evidence"}, token="auditor"
    )
    assert status == 403, refused
    status, held = await server.api(
        "POST", f"/api/v1/recordings/{kept['id']}/hold",
        {"reason": "evidence for appeal", "ref": "A-1"}, token="supervisor",
    )  # fmt: skip
    assert status == 200 and held["held"] and held["held_ref"] == "A-1", held

    # Tokens from before the clock moves (PyJWT checks `iat` against the real clock).
    auditor = server.token("auditor:a", "auditor", ttl=10 * 86400)
    supervisor = server.token("operator:sue", "supervisor", ttl=10 * 86400)
    recordings = server.app[K.RECORDINGS]
    server.later(86400)  # a day: within retention
    assert await recordings.sweep() == []
    server.later(86400 + 60)  # past two days
    assert [r.id for r in await recordings.sweep()] == [gone["id"]]
    assert len(os.listdir(directory)) == 4  # the held one's files
    [deleted] = await audit(server, "recording.deleted", auditor)
    assert deleted["subject"] == f"recording:{gone['id']}"
    status, found = await server.api(
        "GET", f"/api/v1/recordings?visit={visit['id']}&status=deleted", token=auditor
    )
    assert [r["id"] for r in found] == [gone["id"]]
    status, refused = await server.api(
        "POST", f"/api/v1/recordings/{gone['id']}/play", {"reason": "look"}, token=supervisor
    )
    assert status == 422, refused

    status, released = await server.api(
        "POST", f"/api/v1/recordings/{kept['id']}/release", {"reason": "appeal decided"},
        token=supervisor,
    )  # fmt: skip
    assert status == 200 and not released["held"]
    assert [r.id for r in await recordings.sweep()] == [kept["id"]]
    assert os.listdir(directory) == []
    status, report = await server.api("GET", "/api/v1/audit/verify", token=auditor)
    assert status == 200 and report["ok"], report


async def test_a_visit_with_a_minor_is_recorded_like_any_other(server):
    """No per-visit or per-person opt-out: a minor's visit is recorded where recording is on."""
    await seed(server)
    await add_minor(server, "M1", "Mia", guardians=["C1"])
    visit = await make_visit(server, ["M1", "C1"])  # a minor comes with a guardian of theirs
    status, state = await server.api(
        "GET", f"/api/v1/visits/{visit['id']}/state", token=visit["join"]["M1"]["token"]
    )
    assert status == 200 and state["recorded"] is True
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], size=SIZE, fps=FPS)
    try:
        assert (await kiosk.connect())["recorded"] is True
        await asyncio.sleep(1.5)  # the kiosk's media reaches the relay (alone, it gets none)
    finally:
        await kiosk.leave()
    [recording] = await recording_of(server, visit["id"])
    assert recording["status"] == "finalized", recording
