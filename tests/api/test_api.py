"""The REST API over a real server on 127.0.0.1 (SPEC §6): bodies, statuses and refusals."""

from __future__ import annotations

import json
import sqlite3
import time
from urllib.parse import urlsplit

from policy.rfc3339 import format_time
from signaling import keys as K
from signaling.api import ROUTES
from tests.conftest import SECRET, make_visit, seed

ROSTER = [
    ("/api/v1/facilities", {"id": "F1", "name": "North"}),
    ("/api/v1/devices", {"id": "K1", "facility": "F1"}),
    ("/api/v1/inmates", {"id": "I1", "facility": "F1", "name": "Sam"}),
    ("/api/v1/contacts", {"id": "C1", "name": "Ana", "minor": True}),
]


def assert_error(
    status: int, body: object, expected_status: int, code: str | None = None, *, case: object = None
) -> None:
    """Every refusal is exactly {"error": {"code", "message"}} with the right status."""
    where = f"{case!r}: {body!r}"
    assert status == expected_status, where
    assert isinstance(body, dict) and set(body) == {"error"}, where
    assert set(body["error"]) == {"code", "message"}, where
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], where
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], where
    if code is not None:
        assert body["error"]["code"] == code, where


def future(seconds: float) -> str:
    return format_time(time.time() + seconds)


# -- resources ---------------------------------------------------------------------------------
async def test_roster_create_and_list(server):
    for path, body in ROSTER:
        status, answer = await server.api("POST", path, body)
        assert status == 201, answer
        if path.endswith("/devices"):
            token = answer.pop("token")
            claims = server.tokens.verify(token)
            assert (claims.actor.sub, claims.actor.role) == ("device:K1", "kiosk")
        expected = (
            {**body, "approvals": {}, "guardians": []} if path.endswith("/contacts") else body
        )
        if path.endswith("/facilities"):  # the server's defaults: visit length, recording
            expected = {**body, "max_visit_seconds": None, "recording": True,
                        "recording_retention_days": 180,
                        "operators_play_recordings": False}  # fmt: skip
        assert answer == expected
        if path.endswith("/devices"):  # listed with what the console shows of a kiosk
            expected = {**body, "presence": None, "in_call": None, "next_visit": None}
        for role in ("operator", "supervisor", "auditor"):
            status, listed = await server.api("GET", path, token=role)
            assert (status, listed) == (200, [expected]), path


async def test_duplicate_id_is_a_conflict(server):
    for path, body in ROSTER:
        await server.api("POST", path, body)
        status, answer = await server.api("POST", path, body)
        assert_error(status, answer, 409)


ROSTER_REFUSALS = [
    ("/api/v1/facilities", {"id": "F 1", "name": "x"}, 400),
    ("/api/v1/facilities", {"id": "F:1", "name": "x"}, 400),
    ("/api/v1/facilities", {"id": "F1"}, 400),
    ("/api/v1/facilities", ["F1"], 400),
    ("/api/v1/devices", {"id": "K9", "facility": "F9"}, 404),
    ("/api/v1/inmates", {"id": "I9", "facility": "F9", "name": "x"}, 404),
    ("/api/v1/contacts", {"id": "C9", "name": "x", "minor": "yes"}, 400),
    ("/api/v1/contacts/C1/approvals", {"inmate": "I1", "status": "maybe"}, 400),
    ("/api/v1/contacts/C9/approvals", {"inmate": "I1", "status": "approved"}, 404),
    ("/api/v1/contacts/C1/approvals", {"inmate": "I9", "status": "approved"}, 404),
]


async def test_roster_refusals(server):
    # One server for every case: a server start per case would dominate the suite's time.
    await seed(server, contacts=1)
    _, before = await server.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    for path, body, status in ROSTER_REFUSALS:
        code, answer = await server.api("POST", path, body)
        assert_error(code, answer, status, case=(path, body))
    _, after = await server.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    assert after == before  # a refusal changes nothing and audits nothing


async def test_approvals(server):
    for path, body in ROSTER:
        await server.api("POST", path, body)
    status, contact = await server.api(
        "POST", "/api/v1/contacts/C1/approvals", {"inmate": "I1", "status": "approved"}
    )
    assert (status, contact["approvals"]) == (200, {"I1": "approved"})
    status, contact = await server.api(
        "POST",
        "/api/v1/contacts/C1/approvals",
        {"inmate": "I1", "status": "denied", "reason": "Failed the background check"},
    )
    assert (status, contact["approvals"]) == (200, {"I1": "denied"})
    _, listed = await server.api("GET", "/api/v1/contacts", token="auditor")
    assert listed[0]["approvals"] == {"I1": "denied"}


# -- visits -----------------------------------------------------------------------------------
async def test_visit_answer_carries_join_tokens_and_links(server):
    await seed(server)
    starts, ends = time.time() - 1, time.time() + 1800
    status, visit = await server.api("POST", "/api/v1/visits", {
        "inmate": "I1", "device": "K1", "contacts": ["C1", "C2"], "kind": "privileged",
        "starts_at": format_time(starts), "ends_at": format_time(ends),
    })  # fmt: skip
    assert status == 201, visit
    assert visit["id"].startswith("V-")
    assert (visit["inmate"], visit["device"], visit["facility"]) == ("I1", "K1", "F1")
    assert (visit["contacts"], visit["kind"], visit["monitored"]) == (
        ["C1", "C2"],
        "privileged",
        False,
    )
    assert set(visit["join"]) == {"C1", "C2", "device"}
    for contact in ("C1", "C2"):
        link = visit["join"][contact]
        claims = server.tokens.verify(link["token"])
        assert (claims.actor.sub, claims.actor.role, claims.actor.visit) == (
            f"contact:{contact}",
            "family",
            visit["id"],
        )
        assert claims.expires_at >= ends  # valid for the whole visit
        url = urlsplit(link["url"])
        assert url.path == f"/join/{visit['id']}" and url.fragment == f"token={link['token']}"
        assert url.query == ""  # the token never travels where a server log would see it
    device = server.tokens.verify(visit["join"]["device"]["token"])
    assert (device.actor.sub, device.actor.role) == ("device:K1", "kiosk")
    assert visit["join"]["C1"]["token"] != visit["join"]["C2"]["token"]

    public = {k: v for k, v in visit.items() if k != "join"}
    status, got = await server.api("GET", f"/api/v1/visits/{visit['id']}", token="auditor")
    assert (status, got) == (200, public)
    status, listed = await server.api("GET", "/api/v1/visits")
    assert (status, listed) == (200, [public])


async def test_the_join_page_of_a_visit_is_served(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    async with server.http.get(server.url + urlsplit(visit["join"]["C1"]["url"]).path) as response:
        assert response.status == 200
        assert response.content_type == "text/html"


async def test_visit_with_an_unapproved_contact_is_a_conflict(server):
    await seed(server)
    body = {
        "inmate": "I3",
        "device": "K1",
        "contacts": ["C2"],
        "starts_at": future(0),
        "ends_at": future(600),
    }
    status, answer = await server.api("POST", "/api/v1/visits", body)
    assert_error(status, answer, 409, "contact-not-approved")
    _, listed = await server.api("GET", "/api/v1/visits")
    assert listed == []


VISIT_REFUSALS = [
    ({"inmate": "I9"}, 404, "unknown-inmate"),
    ({"device": "K9"}, 404, "unknown-device"),
    ({"contacts": ["C9"]}, 404, "unknown-contact"),
    ({"device": "K2"}, 409, "wrong-facility"),
    ({"contacts": []}, 400, None),
    ({"contacts": "C1"}, 400, None),
    ({"starts_at": "yesterday"}, 400, "bad-time"),
    ({"ends_at": None}, 400, "bad-time"),
    ({"ends_at": "2030-01-01T00:00:00"}, 400, "bad-time"),  # no UTC offset
    ({"kind": "conjugal"}, 400, None),
    ({"ends_at": "2001-01-01T00:00:00Z", "starts_at": "2001-01-01T00:00:00Z"}, 422, None),
]


async def test_visit_refusals(server):
    await seed(server)
    for change, status, code in VISIT_REFUSALS:
        body = {
            "inmate": "I1",
            "device": "K1",
            "contacts": ["C1"],
            "starts_at": future(0),
            "ends_at": future(600),
            **change,
        }
        got, answer = await server.api("POST", "/api/v1/visits", body)
        assert_error(got, answer, status, code, case=change)
    _, listed = await server.api("GET", "/api/v1/visits")
    assert listed == []


async def test_unknown_visit_is_not_found(server):
    status, answer = await server.api("GET", "/api/v1/visits/V-nope")
    assert_error(status, answer, 404, "unknown-visit")


# -- directives, appeals, sessions, reports -------------------------------------------------
async def test_directive_lifecycle(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    body = {"scope": "contact:C1", "action": "suspend", "reason": "threats", "legal_basis": "Rule 7.1",
            "expires_at": future(3600)}  # fmt: skip
    status, directive = await server.api("POST", "/api/v1/directives", body)
    assert status == 201, directive
    assert (directive["status"], directive["sessions_ended"], directive["scope"]) == (
        "active",
        0,
        "contact:C1",
    )
    assert directive["issued_by"] == "operator:operator-default"
    assert directive["confirm_by"] is None and directive["broad"] is False
    assert urlsplit(directive["appeal_url"]).path == f"/appeal/{directive['id']}"

    status, active = await server.api("GET", "/api/v1/directives?status=active", token="auditor")
    assert status == 200 and [d["id"] for d in active] == [directive["id"]]

    # The affected contact appeals; the other contact of the same visit may not.
    c2 = visit["join"]["C2"]["token"]
    status, answer = await server.api(
        "POST", f"/api/v1/directives/{directive['id']}/appeals", {"text": "x"}, token=c2
    )
    assert_error(status, answer, 403, "not-affected")
    c1 = visit["join"]["C1"]["token"]
    status, appeal = await server.api("POST", f"/api/v1/directives/{directive['id']}/appeals",
                                      {"text": "please reconsider"}, token=c1)  # fmt: skip
    assert status == 201, appeal
    assert (appeal["directive"], appeal["filed_by"], appeal["status"]) == (
        directive["id"],
        "contact:C1",
        "open",
    )

    status, got = await server.api("GET", f"/api/v1/directives/{directive['id']}")
    assert status == 200 and [a["id"] for a in got["appeals"]] == [appeal["id"]]

    status, lifted = await server.api("POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "resolved"},
                                      token="supervisor")  # fmt: skip
    assert (status, lifted["status"], lifted["close_reason"]) == (200, "lifted", "resolved")
    status, answer = await server.api(
        "POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "again"}
    )
    assert_error(status, answer, 409)

    status, report = await server.api("GET", "/api/v1/reports/suspensions", token="auditor")
    assert status == 200
    assert (report["directives"], report["targeted"], report["broad"]) == (1, 1, 0)
    assert report["by_status"] == {"lifted": 1} and report["appeals"]["filed"] == 1


DIRECTIVE_REFUSALS = [
    ({"expires_at": None}, 422, "expiry-required"),
    ({"expires_at": future(31 * 86400)}, 422, "too-long"),
    ({"expires_at": future(-60)}, 422, "expiry-in-past"),
    ({"scope": "contact:C9"}, 422, "unknown-target"),
    ({"reason": ""}, 400, None),
    ({"reason": None}, 400, None),
    ({"legal_basis": None}, 400, None),
    ({"scope": "everyone"}, 400, "bad-scope"),
    ({"action": "ban"}, 400, "bad-action"),
]


async def test_directive_refusals(server):
    await seed(server, contacts=1)
    for change, status, code in DIRECTIVE_REFUSALS:
        body = {
            "scope": "contact:C1",
            "action": "suspend",
            "reason": "r",
            "legal_basis": "b",
            "expires_at": future(60),
            **change,
        }
        body = {k: v for k, v in body.items() if v is not None}
        got, answer = await server.api("POST", "/api/v1/directives", body)
        assert_error(got, answer, status, code, case=change)
    _, listed = await server.api("GET", "/api/v1/directives")
    assert listed == []


async def test_broad_directive_confirmation(server):
    await seed(server, contacts=1)
    issuer = server.token("operator:sam", "supervisor")
    body = {
        "scope": "facility:F1",
        "action": "end",
        "reason": "r",
        "legal_basis": "b",
        "expires_at": future(600),
    }
    status, directive = await server.api("POST", "/api/v1/directives", body, token=issuer)
    assert status == 201 and directive["broad"] is True and directive["confirm_by"] is not None
    path = f"/api/v1/directives/{directive['id']}/confirm"
    assert_error(*await server.api("POST", path, {}, token=issuer), 403, "self-confirmation")
    assert_error(*await server.api("POST", path, {}, token="operator"), 403, "role-not-allowed")
    status, confirmed = await server.api("POST", path, {}, token="supervisor")
    assert (status, confirmed["confirmed_by"]) == (200, "operator:supervisor-default")


async def test_sessions_and_unknown_ids(server):
    status, sessions = await server.api("GET", "/api/v1/sessions", token="auditor")
    assert (status, sessions) == (200, [])
    assert_error(
        *await server.api("POST", "/api/v1/sessions/S-nope/end", {}), 404, "unknown-session"
    )
    assert_error(*await server.api("GET", "/api/v1/directives/D-nope"), 404, "unknown-directive")
    assert_error(*await server.api("POST", "/api/v1/directives/D-nope/lift", {"reason": "x"}), 404)
    assert_error(
        *await server.api("POST", "/api/v1/directives/D-nope/confirm", {}, token="supervisor"), 404
    )


# -- refusals common to every route ----------------------------------------------------------
async def test_malformed_json_is_400(server):
    status, answer = await server.api("POST", "/api/v1/facilities", raw=b'{"id": "F1", "name": ')
    assert_error(status, answer, 400, "bad-json")
    status, answer = await server.api("POST", "/api/v1/facilities", raw=b"\xff\xfe")
    assert_error(status, answer, 400, "bad-json")
    status, answer = await server.api("POST", "/api/v1/facilities", raw=b"[" * 60_000)  # too deep
    assert_error(status, answer, 400, "bad-json")
    status, answer = await server.api("POST", "/api/v1/facilities", raw=b"[" * 100_000)  # too big
    assert_error(status, answer, 400, "body-too-large")
    status, answer = await server.api(
        "POST", "/api/v1/facilities", raw=b'"F1"'
    )  # JSON, not an object
    assert_error(status, answer, 400, "bad-body")
    _, listed = await server.api("GET", "/api/v1/facilities")
    assert listed == []


async def test_missing_token_is_401(server):
    for route in ROUTES:
        path = route.path.replace("{id}", "X1").replace("{scope}", "system")
        status, answer = await server.api(
            route.method, path, {} if route.method == "POST" else None, token=None
        )
        assert_error(status, answer, 401, "missing-token")
    async with server.http.get(server.url + "/api/v1/facilities") as response:
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_other_authorization_schemes_are_401(server):
    for header in ("Basic b3A6cHc=", "Bearer", "Bearer    ", "token abc", "bearer"):
        async with server.http.get(
            server.url + "/api/v1/facilities", headers={"Authorization": header}
        ) as response:
            assert_error(response.status, await response.json(), 401, case=header)


async def test_expired_and_forged_tokens_are_401(server):
    from signaling.tokens import Tokens

    expired = Tokens(SECRET, clock=lambda: time.time() - 7200).issue(
        "operator:alice", "operator", 600
    )
    assert_error(
        *await server.api("GET", "/api/v1/facilities", token=expired), 401, "expired-token"
    )
    forged = Tokens(b"not-the-server-secret-but-long-enough-0123456789").issue(
        "operator:alice", "operator", 600
    )
    assert_error(*await server.api("GET", "/api/v1/facilities", token=forged), 401, "bad-token")
    assert_error(*await server.api("GET", "/api/v1/facilities", token="garbage"), 401, "bad-token")
    early = server.tokens.issue("operator:alice", "operator", 7200, not_before=time.time() + 3600)
    assert_error(
        *await server.api("GET", "/api/v1/facilities", token=early), 401, "token-not-yet-valid"
    )


WRONG_ROLES = [
    ("POST", "/api/v1/facilities", "auditor"),
    ("POST", "/api/v1/visits", "auditor"),
    ("POST", "/api/v1/directives", "auditor"),
    ("POST", "/api/v1/directives/D1/lift", "auditor"),
    ("GET", "/api/v1/facilities", "family"),
    ("GET", "/api/v1/visits", "family"),
    ("GET", "/api/v1/audit", "family"),
    ("POST", "/api/v1/directives", "family"),
    ("GET", "/api/v1/directives", "kiosk"),
    ("POST", "/api/v1/devices", "kiosk"),
    ("POST", "/api/v1/directives/D1/confirm", "operator"),
    ("POST", "/api/v1/directives/D1/appeals", "operator"),
    ("GET", "/api/v1/kiosk/visit", "operator"),
]


async def test_wrong_role_is_403(server):
    tokens = {
        "family": server.token("contact:C1", "family", visit="V1"),
        "kiosk": server.token("device:K1", "kiosk"),
    }
    for method, path, role in WRONG_ROLES:
        body = {} if method == "POST" else None
        status, answer = await server.api(method, path, body, token=tokens.get(role, role))
        assert_error(status, answer, 403, "role-not-allowed", case=(method, path, role))
    _, facilities = await server.api("GET", "/api/v1/facilities")
    assert facilities == []


def test_every_route_names_only_known_roles():
    from policy.actor import ROLES

    for route in ROUTES:
        assert route.roles and set(route.roles) <= set(ROLES), route.path
        reads_a_recording = route.path.rsplit("/", 1)[-1] in ("play", "download", "export")
        if route.method != "GET" and not reads_a_recording:  # a read, audited, changes nothing
            assert "auditor" not in route.roles, route.path  # auditors write nothing


async def test_unknown_api_path_and_method(server):
    assert_error(*await server.api("GET", "/api/v1/nope"), 404)
    assert_error(*await server.api("DELETE", "/api/v1/facilities"), 405)


# -- public endpoints --------------------------------------------------------------------------
async def test_health_and_readiness(server):
    status, health = await server.api("GET", "/healthz", token=None)
    assert status == 200 and health["ok"] is True
    status, ready = await server.api("GET", "/readyz", token=None)
    assert status == 200 and ready["ready"] is True and ready["directives_loaded"] is True
    async with server.http.get(server.url + "/metrics") as response:
        assert response.status == 200 and response.content_type == "text/plain"


async def test_openapi_lists_every_route(server):
    status, document = await server.api("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and document["openapi"].startswith("3.")
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert str(route.status) in operation["responses"]
        assert operation["x-roles"] == list(route.roles)
        if "{id}" in route.path:
            assert operation["parameters"][0]["name"] == "id"
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
        assert document["paths"][path]["get"]["security"] == []
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]


# -- audit -----------------------------------------------------------------------------------
async def test_audit_lists_and_verifies_every_write(server):
    await seed(server, contacts=1)
    status, events = await server.api("GET", "/api/v1/audit", token="auditor")
    assert status == 200
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (
        events[0]["action"] == "facility.created"
        and events[0]["actor"] == "operator:operator-default"
    )
    assert {e["action"] for e in events} >= {"facility.created", "device.created", "inmate.created",
                                             "contact.created", "approval.set"}  # fmt: skip
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(events, events[1:], strict=False))
    status, page = await server.api("GET", "/api/v1/audit?after=2&limit=3", token="auditor")
    assert (status, [e["seq"] for e in page]) == (200, [3, 4, 5])
    status, report = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert (status, report) == (200, {
        "ok": True, "events": len(events), "first_bad": None,
        "head": {"seq": events[-1]["seq"], "hash": events[-1]["hash"]}, "anchors_checked": 0,
        "chain_ok": True, "state": {"ok": True, "disagreements": [], "unreplayed": {}},
    })  # fmt: skip


async def test_audit_bad_query_is_400(server):
    for query in ("after=x", "limit=ten", "limit=-1", "after=-3", "limit=0"):
        status, answer = await server.api("GET", f"/api/v1/audit?{query}", token="auditor")
        assert_error(status, answer, 400, "bad-query", case=query)


async def test_audit_verify_detects_tampering_of_the_live_database(server):
    await seed(server, contacts=1)
    with sqlite3.connect(server.app[K.CONFIG].db) as conn:
        conn.execute(
            "UPDATE audit SET data = ? WHERE seq = 4", (json.dumps({"id": "I1", "name": "Eve"}),)
        )
    status, report = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and (report["ok"], report["first_bad"]) == (False, 4)


# -- token refresh -------------------------------------------------------------------------
async def test_token_refresh_is_refused_under_every_directive_that_matches_the_kiosk(server):
    """A kiosk's refresh is an admission (SPEC §3): its subject keys are its facility's and
    its own, the same ones its join is checked with, so `facility:F` refuses it too."""
    await seed(server)
    k1 = (await make_visit(server, ["C1"]))["join"]["device"]["token"]  # kiosk K1, facility F1
    k2 = (await make_visit(server, ["D1"], inmate="I2", device="K2"))["join"]["device"]["token"]
    for scope in ("facility:F1", "device:K1", "system"):
        status, directive = await server.api("POST", "/api/v1/directives", {
            "scope": scope, "action": "suspend", "reason": "Lockdown", "legal_basis": "Rule 7.1",
            "expires_at": future(3600)})  # fmt: skip
        assert status == 201, directive
        status, body = await server.api("POST", "/api/v1/tokens/refresh", {}, token=k1)
        assert status == 409 and body["error"]["code"] == "suspended", (scope, body)
        assert body["directive"]["id"] == directive["id"]
        status, body = await server.api("POST", "/api/v1/tokens/refresh", {}, token=k2)
        assert (status == 409) == (scope == "system"), (scope, body)  # F2's kiosk: only by system
        status, _ = await server.api(
            "POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "over"}
        )
        assert status == 200
    status, body = await server.api("POST", "/api/v1/tokens/refresh", {}, token=k1)
    assert status == 200 and server.tokens.verify(body["token"]).actor.sub == "device:K1"
