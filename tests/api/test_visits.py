"""Scheduling through the API (SPEC §6, issue #16): every rule refused with its code and a
message staff can act on (409 a conflict with what is booked, 422 a broken rule, 400 a bad
request), and every change an audit event that carries the values before and after.

A real server; participants, where a rule is about live calls, are real aiortc peers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from policy.rfc3339 import format_time
from policy.service import Rules
from tests.conftest import Server, make_config, make_visit, seed, start_server, stop_server

NOW = time.time
QUIET = {"video": None, "audio": False}


def window(starts_in: float, length: float) -> dict[str, str | None]:
    start = NOW() + starts_in
    return {"starts_at": format_time(start), "ends_at": format_time(start + length)}


async def book(srv: Server, *, device: str = "K1", contacts: list[str] | None = None,
               kind: str = "social", inmate: str = "I1", **times: Any) -> tuple[int, Any]:  # fmt: skip
    body = {"inmate": inmate, "device": device, "contacts": contacts or ["C1"], "kind": kind}
    return await srv.api("POST", "/api/v1/visits", {**body, **times})


async def events(srv: Server, action: str) -> list[dict[str, Any]]:
    _, found = await srv.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    return [e for e in found if e["action"] == action]


async def replayed(srv: Server) -> None:
    """The rows are what the audit chain implies (policy/replay.py), every event folded."""
    status, report = await srv.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and report["ok"] is True, report
    assert report["state"]["unreplayed"] == {} and report["state"]["disagreements"] == []


def refused(answer: Any, status: int, got: int, code: str) -> None:
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]


# -- a kiosk is never double-booked ---------------------------------------------------------
async def test_a_kiosk_cannot_be_double_booked_counting_the_buffer(server):
    await seed(server)
    status, first = await book(server, **window(3600, 1800))  # 1 h from now, for 30 min
    assert status == 201, first
    for starts_in, length, why in (
        (3600 + 600, 600, "inside it"),
        (3000, 1800, "overlapping its start"),
        (3600 + 1800 + 120, 600, "2 min after its end, within the 5 min buffer"),
        (3600 - 600 - 60, 600, "ending 1 min before its start"),
    ):
        status, answer = await book(server, contacts=["C2"], **window(starts_in, length))
        refused(answer, 409, status, "double-booked")
        assert first["id"] in answer["error"]["message"], why
        assert "5 minutes" in answer["error"]["message"]
    # At the buffer exactly, at another kiosk, or once the first is cancelled: fine.
    status, _ = await book(server, contacts=["C2"], **window(3600 + 1800 + 300, 600))
    assert status == 201
    status, _ = await book(server, device="K3", contacts=["C2"], **window(3600, 1800))
    assert status == 201
    await server.api("POST", f"/api/v1/visits/{first['id']}/cancel", {"reason": "illness"})
    status, _ = await book(server, contacts=["C3"], **window(3600 + 300, 600))
    assert status == 201


async def test_two_bookings_racing_for_one_slot_cannot_both_win(server):
    await seed(server)
    times = window(7200, 1800)
    answers = await asyncio.gather(
        *(book(server, contacts=[f"C{n}"], **times) for n in (1, 2, 3, 4))
    )
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409], answers
    _, booked = await server.api("GET", "/api/v1/visits?device=K1&status=booked")
    assert len(booked) == 1


async def test_the_buffer_is_configurable(tmp_path):
    srv = await start_server(make_config(tmp_path, rules=Rules(visit_buffer_seconds=0)))
    try:
        await seed(srv)
        assert (await book(srv, **window(3600, 1800)))[0] == 201
        assert (await book(srv, contacts=["C2"], **window(5400, 1800)))[0] == 201  # back to back
        status, answer = await book(srv, contacts=["C3"], **window(5399, 600))
        refused(answer, 409, status, "double-booked")
        assert "between visits" not in answer["error"]["message"]
    finally:
        await stop_server(srv)


# -- a visit is no longer than its facility allows --------------------------------------------
async def test_a_facilitys_maximum_visit_length(server):
    await seed(server)
    status, answer = await book(server, **window(3600, 4 * 3600 + 60))  # the default: 4 h
    refused(answer, 422, status, "visit-too-long")
    assert "4 hours" in answer["error"]["message"]
    status, facility = await server.api(
        "PATCH", "/api/v1/facilities/F1", {"max_visit_seconds": 1800}
    )
    assert (status, facility["max_visit_seconds"]) == (200, 1800), facility
    status, answer = await book(server, **window(3600, 1801))
    refused(answer, 422, status, "visit-too-long")
    assert answer["error"]["message"] == "a visit at North lasts at most 30 minutes"
    assert (await book(server, **window(3600, 1800)))[0] == 201
    for bad, code, got in ((30, "bad-maximum", 422), (2 * 86400, "bad-maximum", 422),
                           ("1h", "bad-field", 400), (True, "bad-field", 400)):  # fmt: skip
        status, answer = await server.api(
            "PATCH", "/api/v1/facilities/F1", {"max_visit_seconds": bad}
        )
        refused(answer, got, status, code)
    status, facility = await server.api(
        "PATCH", "/api/v1/facilities/F1", {"max_visit_seconds": None}
    )
    assert facility["max_visit_seconds"] is None
    assert (await book(server, device="K3", **window(3600, 3 * 3600)))[0] == 201
    # A new facility may say so from the start.
    status, created = await server.api(
        "POST", "/api/v1/facilities", {"id": "F9", "name": "Annex", "max_visit_seconds": 2700}
    )
    assert (status, created["max_visit_seconds"]) == (201, 2700)


# -- contacts must be approved; privileged visits are never monitored ---------------------------
async def test_contacts_must_be_approved_for_the_inmate(server):
    await seed(server)
    status, answer = await book(server, contacts=["D1"], **window(3600, 1800))  # D1: for I2 only
    refused(answer, 409, status, "contact-not-approved")
    assert answer["error"]["message"] == "contact D1 is not approved for inmate I1"


async def test_a_privileged_visit_is_marked_never_monitored_and_its_kind_fixed_once_open(server):
    await seed(server)
    now_visit = await make_visit(server, ["C1"], kind="privileged")
    assert (now_visit["kind"], now_visit["monitored"]) == ("privileged", False)
    _, listed = await server.api("GET", f"/api/v1/visits/{now_visit['id']}", token="auditor")
    assert (listed["kind"], listed["monitored"]) == ("privileged", False)
    # Never monitored: refused, and audited.
    monitor = server.client(server.token("operator:olga", "operator"), now_visit["id"],
                            mode="monitor", **QUIET)  # fmt: skip
    answer = await monitor.connect(offer=False)
    await monitor.close()
    assert (answer["code"], monitor.close_code) == ("privileged", 4403)
    assert [e["subject"] for e in await events(server, "monitor.refused")] == [
        f"visit:{now_visit['id']}"
    ]
    # The family is told it is private before joining.
    _, state = await server.api("GET", f"/api/v1/visits/{now_visit['id']}/state",
                                token=now_visit["join"]["C1"]["token"])  # fmt: skip
    assert state["monitored"] is False and "never monitored" in state["notice"]
    # Its kind cannot change once it can be joined (SPEC §10) ...
    status, answer = await server.api(
        "POST", f"/api/v1/visits/{now_visit['id']}/kind", {"kind": "social"}
    )
    refused(answer, 409, status, "visit-open")
    # ... but may before: audited with the kind before and after.
    later = await make_visit(server, ["C1"], device="K3", starts_in=86400)
    status, changed = await server.api(
        "POST", f"/api/v1/visits/{later['id']}/kind", {"kind": "privileged"}
    )
    assert (status, changed["kind"], changed["monitored"]) == (200, "privileged", False)
    (event,) = await events(server, "visit.kind-changed")
    assert (event["data"]["old"], event["data"]["new"]) == (
        {"kind": "social"},
        {"kind": "privileged"},
    )
    assert event["data"]["visit"]["kind"] == "privileged"
    status, answer = await server.api(
        "POST", f"/api/v1/visits/{later['id']}/kind", {"kind": "privileged"}
    )
    refused(answer, 422, status, "unchanged")
    await replayed(server)


# -- cancelling ---------------------------------------------------------------------------
async def test_cancelling_needs_a_structured_reason_and_is_audited(server):
    await seed(server)
    visit = await make_visit(server, ["C1"], starts_in=3600)
    path = f"/api/v1/visits/{visit['id']}/cancel"
    for body, got, code in (({}, 400, "bad-reason"), ({"reason": "bored"}, 400, "bad-reason"),
                            ({"reason": "other"}, 400, "missing-field"),
                            ({"reason": "lockdown", "note": "x" * 501}, 400, "too-long")):  # fmt: skip
        status, answer = await server.api("POST", path, body)
        refused(answer, got, status, code)
    status, cancelled = await server.api(
        "POST", path, {"reason": "kiosk-maintenance", "note": "Screen broken"}
    )
    assert status == 200 and cancelled["status"] == "cancelled"
    assert cancelled["cancellation"]["reason"] == "kiosk-maintenance"
    assert cancelled["cancellation"]["note"] == "Screen broken"
    assert cancelled["cancellation"]["by"] == "operator:operator-default"
    status, answer = await server.api("POST", path, {"reason": "illness"})
    refused(answer, 409, status, "visit-cancelled")
    (event,) = await events(server, "visit.cancelled")
    assert (
        event["data"]["reason"] == "kiosk-maintenance" and event["data"]["note"] == "Screen broken"
    )
    assert (event["data"]["old"], event["data"]["new"]) == (
        {"status": "booked"},
        {"status": "cancelled"},
    )
    assert event["data"]["visit"] == {k: cancelled[k] for k in event["data"]["visit"]}
    # The family's link says why and when; a join is refused (4410: do not retry).
    _, state = await server.api("GET", f"/api/v1/visits/{visit['id']}/state",
                                token=visit["join"]["C1"]["token"])  # fmt: skip
    assert state["state"] == "cancelled"
    assert state["cancelled"]["text"] == "The visiting kiosk is out of order. Screen broken"
    assert state["cancelled"]["at"] == cancelled["cancellation"]["at"]
    await replayed(server)


async def test_cancelling_a_live_visit_ends_its_sessions_and_tells_them_why(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    clients = [
        server.client(visit["join"][w]["token"], visit["id"], **QUIET) for w in ("device", "C1")
    ]
    try:
        for client in clients:
            assert (await client.connect(offer=False))["type"] == "joined"
        status, answer = await server.api(
            "POST", f"/api/v1/visits/{visit['id']}/cancel", {"reason": "lockdown"}
        )
        assert (status, answer["sessions_ended"]) == (200, 2), answer
        for client in clients:  # told and closed before the answer
            await asyncio.wait_for(client.closed.wait(), 5)
            assert client.close_code == 4410
            assert client.terminated["message"] == (
                "Facility staff cancelled this visit. The facility is in lockdown."
            )
            assert client.terminated["reason"] == "operator:operator-default"
        late = server.client(visit["join"]["C2"]["token"], visit["id"], **QUIET)
        refusal = await late.connect(offer=False)
        await late.close()
        assert (refusal["code"], late.close_code) == ("visit-cancelled", 4410)
        assert (
            refusal["message"]
            == "This visit was cancelled by the facility: The facility is in lockdown."
        )
        status, body = await server.api(
            "POST", "/api/v1/tokens/refresh", {}, token=visit["join"]["C2"]["token"]
        )
        refused(body, 409, status, "visit-cancelled")
    finally:
        for client in clients:
            await client.close()


# -- rescheduling ---------------------------------------------------------------------------
async def test_rescheduling_keeps_the_visit_and_its_links_and_is_audited(server):
    await seed(server)
    visit = await make_visit(server, ["C1"], starts_in=3600, length=1800)
    path = f"/api/v1/visits/{visit['id']}/reschedule"
    moved_to = window(-1, 1800)  # now: so the old link can be tried at once
    status, moved = await server.api("POST", path, moved_to)
    assert status == 200, moved
    assert moved["id"] == visit["id"] and moved["starts_at"] == moved_to["starts_at"]
    assert moved["moved"]["from"] == {"starts_at": visit["starts_at"], "ends_at": visit["ends_at"]}
    assert moved["links_kept"] is True and set(moved["join"]) == {"C1", "device"}
    (event,) = await events(server, "visit.rescheduled")
    assert event["data"]["old"] == {"starts_at": visit["starts_at"], "ends_at": visit["ends_at"], "device": "K1"}
    assert event["data"]["new"] == {**moved_to, "device": "K1"}
    # The link sent before the move joins the same visit, now.
    family = server.client(visit["join"]["C1"]["token"], visit["id"], **QUIET)
    try:
        joined = await family.connect(offer=False)
        assert joined["type"] == "joined" and joined["ends_at"] == moved_to["ends_at"]
        # Someone is in it: it is not moved from under them.
        status, answer = await server.api("POST", path, window(7200, 1800))
        refused(answer, 409, status, "visit-live")
    finally:
        await family.close()
    status, answer = await server.api(
        "POST", path, {"starts_at": moved["starts_at"], "ends_at": moved["ends_at"]}
    )
    refused(answer, 422, status, "unchanged")
    status, answer = await server.api("POST", path, window(-7200, 600))
    refused(answer, 422, status, "visit-in-past")
    status, answer = await server.api("POST", path, {"starts_at": "tomorrow"})
    refused(answer, 400, status, "bad-time")
    await replayed(server)


async def test_a_move_onto_a_booked_slot_is_refused(server):
    await seed(server)
    first = await make_visit(server, ["C1"], starts_in=3600, length=1800)
    second = await make_visit(server, ["C2"], starts_in=3 * 3600, length=1800)
    status, answer = await server.api(
        "POST", f"/api/v1/visits/{second['id']}/reschedule", window(3600 + 900, 1800)
    )
    refused(answer, 409, status, "double-booked")
    assert first["id"] in answer["error"]["message"]
    # Moving a visit within its own slot is no clash with itself.
    status, _ = await server.api(
        "POST", f"/api/v1/visits/{first['id']}/reschedule", window(3600 + 600, 1800)
    )
    assert status == 200
    # Or to another kiosk of its facility, at the same time (its own is out of order, say);
    # not to one in another facility.
    same = {"starts_at": second["starts_at"], "ends_at": second["ends_at"]}
    status, moved = await server.api(
        "POST", f"/api/v1/visits/{second['id']}/reschedule", {**same, "device": "K3"}
    )
    assert (status, moved["device"], moved["starts_at"]) == (200, "K3", second["starts_at"])
    status, answer = await server.api(
        "POST", f"/api/v1/visits/{second['id']}/reschedule", {**same, "device": "K2"}
    )
    refused(answer, 409, status, "wrong-facility")
    status, answer = await server.api(
        "POST", f"/api/v1/visits/{second['id']}/reschedule", {**same, "device": "K3"}
    )
    refused(answer, 422, status, "unchanged")


# -- after the window: ended or no-show, counted -----------------------------------------------
async def test_after_its_window_a_visit_is_ended_or_a_no_show_and_counted(server):
    await seed(server)
    missed = await make_visit(server, ["C1"], starts_in=-60, length=62)
    kept = await make_visit(server, ["C2"], device="K3", starts_in=-60, length=62)
    family = server.client(kept["join"]["C2"]["token"], kept["id"], **QUIET)
    kiosk = server.client(missed["join"]["device"]["token"], missed["id"], **QUIET)
    try:
        assert (await family.connect(offer=False))["type"] == "joined"
        assert (await kiosk.connect(offer=False))["type"] == "joined"  # the kiosk alone: no-show
        await asyncio.wait_for(family.closed.wait(), 10)  # the window ends on the server
    finally:
        await family.close()
        await kiosk.close()
    deadline = time.monotonic() + 15
    while True:
        _, visits = await server.api("GET", "/api/v1/visits", token="auditor")
        states = {v["id"]: v["status"] for v in visits}
        if states[missed["id"]] != "booked" and states[kept["id"]] != "booked":
            break
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.2)
    assert (states[missed["id"]], states[kept["id"]]) == ("no-show", "ended")
    (no_show,) = await events(server, "visit.no-show")
    assert no_show["actor"] == "system:parlor" and no_show["data"]["joined"] == ["device:K1"]
    (ended,) = await events(server, "visit.ended")
    assert ended["data"]["joined"] == ["contact:C2"]
    status, report = await server.api("GET", "/api/v1/reports/visits", token="auditor")
    assert status == 200 and report["no_shows"] == 1
    assert report["by_status"] == {"booked": 0, "cancelled": 0, "ended": 1, "no-show": 1}
    assert report["by_facility"] == {"F1": {"ended": 1, "no-show": 1}}
    _, state = await server.api("GET", f"/api/v1/visits/{missed['id']}/state",
                                token=missed["join"]["C1"]["token"])  # fmt: skip
    assert state["state"] == "ended"
    await replayed(server)


# -- what a family's link reads --------------------------------------------------------------
async def test_the_family_state_of_a_visit_for_its_own_family_only(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"], starts_in=7200)
    path = f"/api/v1/visits/{visit['id']}/state"
    status, state = await server.api("GET", path, token=visit["join"]["C1"]["token"])
    assert status == 200
    assert (state["state"], state["starts_at"], state["kind"]) == (
        "upcoming",
        visit["starts_at"],
        "social",
    )
    assert state["notice"] == "This visit may be monitored by facility staff."
    assert state["inmate"] == {"name": "Sam"} and state["facility"] == {"name": "North"}
    assert state["moved"] is None and state["cancelled"] is None
    other = await make_visit(server, ["D1"], inmate="I2", device="K2", starts_in=7200)
    status, answer = await server.api("GET", path, token=other["join"]["D1"]["token"])
    refused(answer, 403, status, "wrong-visit")
    status, answer = await server.api("GET", path, token=visit["join"]["device"]["token"])
    refused(answer, 403, status, "role-not-allowed")
    # A token in the query string is not a token.
    status, answer = await server.api(
        "GET", f"{path}?token={visit['join']['C1']['token']}", token=None
    )
    refused(answer, 401, status, "missing-token")


# -- visits of a day, and the people ----------------------------------------------------------
async def test_listing_a_days_visits_by_facility(server):
    await seed(server)
    today = await make_visit(server, ["C1"], starts_in=3600)
    await make_visit(server, ["C1"], starts_in=3 * 86400)
    await make_visit(server, ["D1"], inmate="I2", device="K2", starts_in=3600)
    day = {"from": format_time(NOW()), "to": format_time(NOW() + 86400)}
    status, listed = await server.api(
        "GET", f"/api/v1/visits?facility=F1&from={day['from']}&to={day['to']}", token="auditor"
    )
    assert status == 200 and [v["id"] for v in listed] == [today["id"]]
    for query, code in (("status=gone", "bad-query"), ("from=yesterday", "bad-time"),
                        ("facility=a:b", "bad-id")):  # fmt: skip
        status, answer = await server.api("GET", f"/api/v1/visits?{query}")
        assert status == 400 and answer["error"]["code"] == code, query


async def test_editing_facilities_inmates_and_contacts_is_audited(server):
    await seed(server)
    status, facility = await server.api("PATCH", "/api/v1/facilities/F1", {"name": "North Wing"})
    assert (status, facility["name"]) == (200, "North Wing")
    status, inmate = await server.api("PATCH", "/api/v1/inmates/I1", {"name": "Sam Rivera"})
    assert (status, inmate["name"]) == (200, "Sam Rivera")
    status, contact = await server.api("PATCH", "/api/v1/contacts/C1", {"minor": True})
    assert (status, contact["minor"]) == (200, True)
    for action, subject, old, new in (
        ("facility.updated", "facility:F1", {"name": "North"}, {"name": "North Wing"}),
        ("inmate.updated", "inmate:I1", {"name": "Sam"}, {"name": "Sam Rivera"}),
        ("contact.updated", "contact:C1", {"minor": False}, {"minor": True}),
    ):
        (event,) = await events(server, action)
        assert (event["subject"], event["data"]["old"], event["data"]["new"]) == (subject, old, new)
    for path, body, got, code in (
        ("/api/v1/inmates/I1", {"facility": "F2"}, 400, "not-editable"),
        ("/api/v1/inmates/I1", {"name": "Sam Rivera"}, 422, "unchanged"),
        ("/api/v1/contacts/C1", {"minor": "yes"}, 400, "bad-field"),
        ("/api/v1/contacts/C-none", {"name": "X"}, 404, "unknown-contact"),
        ("/api/v1/facilities/F-none", {"name": "X"}, 404, "unknown-facility"),
        ("/api/v1/facilities/F1", {"name": " "}, 400, "missing-field"),
    ):
        status, answer = await server.api("PATCH", path, body)
        refused(answer, got, status, code)


async def test_a_contacts_page_has_their_approvals_visits_and_directives(server):
    await seed(server)
    visit = await make_visit(server, ["C1"], starts_in=3600)
    body = {"action": "audio-only", "reason": "Coded language", "legal_basis": "Rule 7",
            "expires_at": format_time(NOW() + 3600)}  # fmt: skip
    for scope in ("pair:I1:C1", "contact:C1", "contact:C2"):
        status, _ = await server.api("POST", "/api/v1/directives", {**body, "scope": scope})
        assert status == 201
    status, page = await server.api("GET", "/api/v1/contacts/C1", token="auditor")
    assert status == 200 and page["name"] == "Contact 1" and page["minor"] is False
    assert [(a["inmate"], a["status"], a["inmate_name"]) for a in page["approval_records"]] == [
        ("I1", "approved", "Sam"), ("I3", "approved", "Lee"),
    ]  # fmt: skip
    assert [v["id"] for v in page["visits"]] == [visit["id"]]
    assert sorted(d["scope"] for d in page["directives"]) == ["contact:C1", "pair:I1:C1"]
