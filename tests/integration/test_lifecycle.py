"""Directive lifecycle: expiry and lapse on time, confirmation, appeals, roles, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import jwt
import pytest

from tests.conftest import (
    SECRET,
    free_port,
    make_config,
    make_visit,
    recordings_done,
    seed,
    start_server,
    stop_server,
)
from tests.harness.processes import wait_ready
from tests.integration.test_directives import LIGHT, directive_body


async def directive_status(server, directive_id: str) -> str:
    status, body = await server.api("GET", f"/api/v1/directives/{directive_id}")
    assert status == 200, body
    return body["status"]


async def wait_status(server, directive_id: str, wanted: str, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while await directive_status(server, directive_id) != wanted:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{directive_id} never became {wanted}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_expiry_happens_on_time_and_readmits(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    status, directive = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1", seconds=1.5)
    )
    assert status == 201
    refused = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    assert (await refused.connect())["type"] == "error"
    await refused.close()
    waited = await wait_status(server, directive["id"], "expired")
    assert waited < 3.0
    admitted = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    assert (await admitted.connect())["type"] == "joined"
    await admitted.close()
    status, events = await server.api("GET", "/api/v1/audit")
    assert any(
        e["action"] == "directive.expired" and e["subject"] == f"directive:{directive['id']}"
        for e in events
    )


@pytest.fixture
async def short_window(tmp_path):
    from dataclasses import replace

    from policy.service import Rules

    srv = await start_server(
        make_config(tmp_path, rules=replace(Rules(), confirm_window_seconds=1.0))
    )
    try:
        yield srv
    finally:
        await stop_server(srv)


async def test_broad_directive_lapses_unless_a_second_supervisor_confirms(short_window):
    server = short_window
    await seed(server)
    sup1 = server.token("operator:sue", "supervisor")
    sup2 = server.token("operator:sam", "supervisor")
    op = server.token("operator:olga", "operator")

    status, lapsing = await server.api(
        "POST", "/api/v1/directives", directive_body("facility:F1"), token=sup1
    )
    assert status == 201 and lapsing["broad"] and lapsing["confirm_by"] is not None
    waited = await wait_status(server, lapsing["id"], "lapsed")
    assert waited < 3.0

    status, confirmed = await server.api(
        "POST", "/api/v1/directives", directive_body("system"), token=op
    )
    assert status == 201
    status, body = await server.api(
        "POST", f"/api/v1/directives/{confirmed['id']}/confirm", {}, token=op
    )
    assert status == 403  # an operator cannot confirm
    status, body = await server.api(
        "POST", f"/api/v1/directives/{lapsing['id']}/confirm", {}, token=sup2
    )
    assert status == 409  # too late: it lapsed
    status, body = await server.api(
        "POST", f"/api/v1/directives/{confirmed['id']}/confirm", {}, token=sup2
    )
    assert status == 200 and body["confirmed_by"] == "operator:sam"
    status, body = await server.api(
        "POST", f"/api/v1/directives/{confirmed['id']}/confirm", {}, token=sup1
    )
    assert status == 409  # already confirmed
    await asyncio.sleep(1.5)
    assert await directive_status(server, confirmed["id"]) == "active"

    status, own = await server.api(
        "POST", "/api/v1/directives", directive_body("facility:F2"), token=sup1
    )
    status, body = await server.api(
        "POST", f"/api/v1/directives/{own['id']}/confirm", {}, token=sup1
    )
    assert status == 403 and body["error"]["code"] == "self-confirmation"

    status, targeted = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1"), token=op
    )
    assert targeted["confirm_by"] is None
    status, body = await server.api(
        "POST", f"/api/v1/directives/{targeted['id']}/confirm", {}, token=sup2
    )
    assert status == 409 and body["error"]["code"] == "not-broad"

    status, events = await server.api("GET", "/api/v1/audit?limit=5000")
    actions = [e["action"] for e in events]
    assert "directive.lapsed" in actions and "directive.confirmed" in actions
    status, report = await server.api("GET", "/api/v1/audit/verify")
    assert report["ok"] is True


async def test_rules_refuse_unbounded_and_overlong_directives(server):
    await seed(server)
    body = directive_body("contact:C1")
    del body["expires_at"]
    status, answer = await server.api("POST", "/api/v1/directives", body)
    assert status == 422 and answer["error"]["code"] == "expiry-required"
    status, answer = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1", seconds=31 * 86400)
    )
    assert status == 422 and answer["error"]["code"] == "too-long"
    status, answer = await server.api(
        "POST", "/api/v1/directives", {**directive_body("contact:C1"), "legal_basis": ""}
    )
    assert status == 400
    status, answer = await server.api("POST", "/api/v1/directives", directive_body("contact:NOPE"))
    assert status == 422 and answer["error"]["code"] == "unknown-target"
    status, answer = await server.api("POST", "/api/v1/directives", directive_body("galaxy:1"))
    assert status == 400 and answer["error"]["code"] == "bad-scope"


ROLES = ["operator", "supervisor", "auditor", "family", "kiosk", "none", "expired", "forged"]


async def test_role_matrix_of_directive_routes(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    status, d = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1"), token="operator"
    )
    assert status == 201
    family = visit["join"]["C1"]["token"]
    tokens = {
        "operator": server.token("operator:o2", "operator"),
        "supervisor": server.token("operator:s2", "supervisor"),
        "auditor": server.token("auditor:a", "auditor"),
        "family": family,
        "kiosk": visit["join"]["device"]["token"],
        "none": None,
        "forged": family[:-4] + ("AAAA" if not family.endswith("AAAA") else "BBBB"),
    }
    tokens["expired"] = jwt.encode({"sub": "operator:old", "role": "operator", "iat": 1, "nbf": 1, "exp": 2, "jti": "x"},
                                   SECRET, algorithm="HS256")  # fmt: skip
    routes = {
        ("GET", "/api/v1/directives"): {"operator": 200, "supervisor": 200, "auditor": 200},
        ("GET", f"/api/v1/directives/{d['id']}"): {
            "operator": 200,
            "supervisor": 200,
            "auditor": 200,
        },
        ("POST", "/api/v1/directives"): {"operator": 201, "supervisor": 201},
        ("POST", f"/api/v1/directives/{d['id']}/confirm"): {"operator": 403, "supervisor": 409},
        ("POST", f"/api/v1/directives/{d['id']}/appeals"): {"family": 201},
        ("GET", "/api/v1/reports/suspensions"): {
            "operator": 200,
            "supervisor": 200,
            "auditor": 200,
        },
        ("GET", "/api/v1/sessions"): {"operator": 200, "supervisor": 200, "auditor": 200},
    }
    bodies = {
        "POST /api/v1/directives": directive_body("contact:C2"),
        "appeals": {"text": "I did nothing wrong"},
    }
    for (method, path), allowed in routes.items():
        for role in ROLES:
            body = (
                bodies["appeals"]
                if path.endswith("/appeals")
                else bodies.get(f"{method} {path}", {})
            )
            status, answer = await server.api(
                method, path, body if method == "POST" else None, token=tokens[role]
            )
            expected = allowed.get(role, 401 if role in ("none", "expired", "forged") else 403)
            assert status == expected, (method, path, role, status, answer)
    # lift last: operator and supervisor may, others may not
    for role in ("auditor", "family", "kiosk", "none"):
        status, _ = await server.api(
            "POST", f"/api/v1/directives/{d['id']}/lift", {"reason": "x"}, token=tokens[role]
        )
        assert status in (401, 403), role
    status, lifted = await server.api(
        "POST", f"/api/v1/directives/{d['id']}/lift", {"reason": "x"}, token=tokens["supervisor"]
    )
    assert status == 200 and lifted["status"] == "lifted"
    status, _ = await server.api(
        "POST", f"/api/v1/directives/{d['id']}/lift", {"reason": "x"}, token=tokens["operator"]
    )
    assert status == 409


async def test_appeal_is_filed_by_the_affected_and_decided_by_someone_else(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    issuer = server.token("operator:ivan", "operator")
    status, d = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1"), token=issuer
    )
    status, answer = await server.api("POST", f"/api/v1/directives/{d['id']}/appeals", {"text": "x"},
                                      token=visit["join"]["C2"]["token"])  # fmt: skip
    assert status == 403 and answer["error"]["code"] == "not-affected"
    status, appeal = await server.api("POST", f"/api/v1/directives/{d['id']}/appeals",
                                      {"text": "It was a birthday card"}, token=visit["join"]["C1"]["token"])  # fmt: skip
    assert status == 201 and appeal["status"] == "open"
    status, answer = await server.api("POST", f"/api/v1/appeals/{appeal['id']}/decide",
                                      {"decision": "lift", "note": "ok"}, token=issuer)  # fmt: skip
    assert status == 403 and answer["error"]["code"] == "issuer-cannot-decide"
    status, decided = await server.api("POST", f"/api/v1/appeals/{appeal['id']}/decide",
                                       {"decision": "lift", "note": "card was harmless"},
                                       token=server.token("operator:sue", "supervisor"))  # fmt: skip
    assert status == 200 and decided["status"] == "lifted"
    assert await directive_status(server, d["id"]) == "lifted"
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    assert (await c1.connect())["type"] == "joined"
    await c1.close()
    await recordings_done(server, visit["id"])  # its events come after the call
    status, report = await server.api("GET", "/api/v1/reports/suspensions")
    assert report["appeals"]["filed"] == 1 and report["appeals"]["lifted"] == 1
    assert report["by_scope_kind"] == {"contact": 1} and report["targeted"] == 1
    status, events = await server.api("GET", "/api/v1/audit")
    actions = [e["action"] for e in events]
    assert (
        "appeal.filed" in actions and "appeal.decided" in actions and "directive.lifted" in actions
    )
    status, verify = await server.api("GET", "/api/v1/audit/verify")
    assert verify["ok"] is True and verify["events"] == len(events)


async def test_directives_survive_a_restart_and_apply_before_admission(tmp_path):
    config = make_config(tmp_path)
    server = await start_server(config)
    await seed(server)
    visit = await make_visit(server, ["C1"])
    status, d = await server.api("POST", "/api/v1/directives", directive_body("contact:C1"))
    assert status == 201
    await stop_server(server)

    server = await start_server(config)
    try:
        refused = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        answer = await refused.connect()
        await refused.close()
        assert answer["type"] == "error" and answer["directive"]["id"] == d["id"]
        status, verify = await server.api("GET", "/api/v1/audit/verify")
        assert verify["ok"] is True
    finally:
        await stop_server(server)


async def test_acknowledged_directives_survive_kill_9(tmp_path):
    """Each directive is durable before the API answers: SIGKILL right after the answer."""
    env = {**os.environ, "PARLOR_SECRET": SECRET.decode(), "PARLOR_DB": str(tmp_path / "parlor.db"),
           "PARLOR_ICE_ADDRESSES": "127.0.0.1"}  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "node.log"
    from signaling.tokens import Tokens

    operator = Tokens(SECRET).issue("operator:k", "operator", 3600)
    headers = {"Authorization": f"Bearer {operator}"}
    acknowledged = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for round_ in range(5):
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "serve", "--port", str(port)], env=env,
                                        stdout=out, stderr=out)  # fmt: skip
            try:
                await wait_ready(url, proc, log)
                if round_ == 0:
                    await http.post(url + "/api/v1/facilities", json={"id": "F1", "name": "N"})
                    await http.post(
                        url + "/api/v1/contacts", json={"id": "C1", "name": "c", "minor": False}
                    )
                async with http.post(
                    url + "/api/v1/directives", json=directive_body("contact:C1")
                ) as response:
                    assert response.status == 201
                    acknowledged.append((await response.json())["id"])
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait()
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "serve", "--port", str(port)], env=env,
                                    stdout=out, stderr=out)  # fmt: skip
        try:
            await wait_ready(url, proc, log)
            async with http.get(url + "/api/v1/directives?status=active") as response:
                active = {d["id"] for d in await response.json()}
            async with http.get(url + "/api/v1/audit/verify") as response:
                verify = await response.json()
        finally:
            proc.terminate()
            proc.wait()
    assert set(acknowledged) <= active
    assert verify["ok"] is True
