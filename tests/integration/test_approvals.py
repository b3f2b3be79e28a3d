"""Approvals are enforced like directives (SPEC §4, issue #15 item 1): denying or withdrawing
a contact's approval for an inmate ends that contact's live sessions with that inmate at
once (`approval-withdrawn`, close 4403, told why), refuses their joins and token refreshes
while it lasts, and cancels the visits left without an approved contact.

Real aiortc peers over real WebSockets against a real server; the race is run as
tests/integration/test_admission_race.py runs the directive's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import Server, make_visit, seed, wait_until
from tests.harness.race import (
    Join,
    close_all,
    live_matching,
    race_round,
    seed_pair_race,
    withdrawal_stragglers,
)
from tests.integration.test_admission_race import JOINS, OFFSETS, REPEATS, racing_config

LIGHT = {"size": (160, 120), "fps": 10}


async def deny(srv: Server, contact: str, inmate: str, reason: str = "Threats in a letter") -> Any:
    status, answer = await srv.api(
        "POST", f"/api/v1/contacts/{contact}/approvals",
        {"inmate": inmate, "status": "denied", "reason": reason},
    )  # fmt: skip
    assert status == 200, answer
    return answer


async def approve(srv: Server, contact: str, inmate: str) -> None:
    status, answer = await srv.api(
        "POST", f"/api/v1/contacts/{contact}/approvals", {"inmate": inmate, "status": "approved"}
    )
    assert status == 200, answer


async def test_denying_a_contact_ends_their_call_refuses_their_link_and_their_refresh(server):
    """The issue's attack, now refused: after the denial, the contact's existing link gives
    no call and no fresh token; the call they were in ended with why; the kiosk's goes on
    (another contact is still approved, so the visit stands)."""
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    other = await make_visit(server, ["C1"], inmate="I3", device="K3")  # C1 with another inmate
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    elsewhere = server.client(other["join"]["C1"]["token"], other["id"], **LIGHT)
    clients = [kiosk, c1, elsewhere]
    try:
        for client in clients:
            assert (await client.connect())["type"] == "joined"
        await c1.wait_frames("video", 3, timeout=15)

        answer = await deny(server, "C1", "I1")
        # Before the answer: C1's session with I1 ended, told why, close 4403.
        assert answer["sessions_ended"] == 1 and answer["visits_cancelled"] == []
        assert answer["approval"]["status"] == "denied" and answer["previous"] == "approved"
        await asyncio.wait_for(c1.closed.wait(), 5)
        assert c1.close_code == 4403
        assert c1.terminated is not None and c1.terminated["reason"] == "approval-withdrawn"
        assert "withdrawn" in c1.terminated["message"]
        # Nobody else: the kiosk's session and C1's call with another inmate go on.
        assert not kiosk.closed.is_set() and not elsewhere.closed.is_set()
        _, live = await server.api("GET", "/api/v1/sessions")
        assert {s["sub"] for s in live if s["visit"] == visit["id"]} == {"device:K1"}

        # The existing link: refused, with a code that says why, close 4403 (no reconnect).
        again = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        clients.append(again)
        refused = await again.connect()
        assert (refused["type"], refused["code"]) == ("error", "not-approved")
        assert again.close_code == 4403
        # A token refresh: refused too.
        status, body = await server.api(
            "POST", "/api/v1/tokens/refresh", {}, token=visit["join"]["C1"]["token"]
        )
        assert (status, body["error"]["code"]) == (409, "not-approved")
        # The family's page says so before anyone joins.
        status, state = await server.api(
            "GET", f"/api/v1/visits/{visit['id']}/state", token=visit["join"]["C1"]["token"]
        )
        assert (status, state["state"]) == (200, "not-approved")

        # Approved again: the same link works again.
        await approve(server, "C1", "I1")
        back = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        clients.append(back)
        assert (await back.connect())["type"] == "joined"
    finally:
        for client in clients:
            await client.close()

    # The audit log: the denial with everything a replay needs, then the session's end.
    _, events = await server.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    denial = next(
        e for e in events if e["action"] == "approval.set" and e["data"]["status"] == "denied"
    )
    assert denial["subject"] == "pair:I1:C1"
    assert {k: denial["data"][k] for k in ("contact", "inmate", "previous", "reason")} == {
        "contact": "C1", "inmate": "I1", "previous": "approved", "reason": "Threats in a letter",
    }  # fmt: skip
    assert denial["data"]["decided_by"] == denial["actor"]
    ended = [
        e for e in events
        if e["action"] == "session.ended" and e["data"]["reason"] == "approval-withdrawn"
    ]  # fmt: skip
    assert [e["actor"] for e in ended] == ["contact:C1"] and ended[0]["seq"] > denial["seq"]


async def test_visits_left_without_an_approved_contact_are_cancelled(server):
    """Future and live visits where the contact was the only approved one are cancelled
    (`approval-withdrawn`): the kiosk of the live one is ended and told; a visit with another
    approved contact stands."""
    await seed(server)
    live = await make_visit(server, ["C1"])  # now, at K1
    future = await make_visit(server, ["C1"], starts_in=86400, device="K3")
    shared = await make_visit(server, ["C1", "C2"], starts_in=2 * 86400, device="K3")
    kiosk = server.client(live["join"]["device"]["token"], live["id"], **LIGHT)
    contact = server.client(live["join"]["C1"]["token"], live["id"], **LIGHT)
    try:
        assert (await kiosk.connect())["type"] == "joined"
        assert (await contact.connect())["type"] == "joined"
        answer = await deny(server, "C1", "I1", reason="Contraband found on the last visit")
        assert sorted(answer["visits_cancelled"]) == sorted([live["id"], future["id"]])
        await asyncio.wait_for(kiosk.closed.wait(), 5)
        await asyncio.wait_for(contact.closed.wait(), 5)
        assert contact.close_code == 4403
        assert kiosk.close_code == 4410  # the visit is over for the kiosk: it does not rejoin
        assert kiosk.terminated is not None and kiosk.terminated["reason"] == "approval-withdrawn"
        assert "cancelled" in kiosk.terminated["message"]
    finally:
        await kiosk.close()
        await contact.close()

    for visit, status in ((live, "cancelled"), (future, "cancelled"), (shared, "booked")):
        _, stored = await server.api("GET", f"/api/v1/visits/{visit['id']}")
        assert stored["status"] == status, stored
    _, stored = await server.api("GET", f"/api/v1/visits/{future['id']}")
    assert stored["cancellation"]["reason"] == "approval-withdrawn"
    # The kiosk's link to the cancelled visit is refused as cancelled, 4410.
    late = server.client(live["join"]["device"]["token"], live["id"], **LIGHT)
    refused = await late.connect(offer=False)
    await late.close()
    assert (refused["code"], late.close_code) == ("visit-cancelled", 4410)
    _, events = await server.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    cancelled = [e for e in events if e["action"] == "visit.cancelled"]
    assert sorted(e["subject"] for e in cancelled) == sorted(
        f"visit:{v['id']}" for v in (live, future)
    )
    assert all(e["data"]["reason"] == "approval-withdrawn" for e in cancelled)
    status, report = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and report["ok"] and report["state"]["unreplayed"] == {}, report


async def test_a_denial_or_withdrawal_needs_a_reason_and_a_pending_request_ends_nothing(server):
    await seed(server)
    for body in ({"inmate": "I1", "status": "denied"}, {"inmate": "I1", "status": "pending"}):
        status, answer = await server.api("POST", "/api/v1/contacts/C1/approvals", body)
        assert (status, answer["error"]["code"]) == (400, "reason-required"), body
    # A request (pending) for a new inmate, then a denial of it: no visit, nothing to end.
    status, answer = await server.api(
        "POST", "/api/v1/contacts/C2/approvals", {"inmate": "I3", "status": "pending"}
    )
    assert status == 200 and answer["approvals"]["I3"] == "pending"
    _, queue = await server.api("GET", "/api/v1/approvals?status=pending", token="auditor")
    assert [(a["contact"], a["inmate"], a["inmate_name"]) for a in queue] == [("C2", "I3", "Lee")]
    answer = await deny(server, "C2", "I3", reason="Not on the visiting list")
    assert (answer["sessions_ended"], answer["visits_cancelled"]) == (0, [])
    # Withdrawing (approved -> pending) is enforced like a denial.
    visit = await make_visit(server, ["C3"])
    client = server.client(visit["join"]["C3"]["token"], visit["id"], **LIGHT)
    try:
        assert (await client.connect())["type"] == "joined"
        status, answer = await server.api(
            "POST", "/api/v1/contacts/C3/approvals",
            {"inmate": "I1", "status": "pending", "reason": "Identity to be checked again"},
        )  # fmt: skip
        assert status == 200 and answer["sessions_ended"] == 1
        await asyncio.wait_for(client.closed.wait(), 5)
        assert (client.close_code, client.terminated["reason"]) == (4403, "approval-withdrawn")
    finally:
        await client.close()
    status, answer = await server.api("GET", "/api/v1/approvals?status=maybe")
    assert (status, answer["error"]["code"]) == (400, "bad-query")


async def test_joins_racing_an_approval_withdrawal_are_all_refused_or_ended(tmp_path):
    """20 joins of one contact (20 visits with one inmate) in flight while the contact's
    approval for the inmate is withdrawn, at offsets of 0–50 ms: once the denial has
    answered, none of them is live, every one that started ended `approval-withdrawn`, and
    every join either joined-then-ended or was refused `not-approved` (4403)."""
    from tests.conftest import start_server, stop_server

    node = await start_server(racing_config(tmp_path))
    try:
        visits = await seed_pair_race(node, JOINS)
        inmate = visits[0]["inmate"]
        scope = f"pair:{inmate}:CR"
        joins = [Join(node, v["join"]["CR"]["token"], v["id"]) for v in visits]
        problems: list[str] = []
        joined = refused = 0
        for offset in OFFSETS:
            for _ in range(REPEATS):

                async def issue() -> tuple[int, Any]:
                    return await node.api("POST", "/api/v1/contacts/CR/approvals", {  # type: ignore[no-any-return]
                        "inmate": inmate, "status": "denied", "reason": "Race"})  # fmt: skip

                outcome = await race_round(
                    [node], joins, issue, scope=scope, subjects=frozenset({"contact:CR"}),
                    offset=offset,
                )  # fmt: skip
                try:
                    problems += [f"offset {offset * 1000:g} ms: {p}"
                                 for p in withdrawal_stragglers(outcome)]  # fmt: skip
                    joined += outcome.joined
                    refused += sum(1 for m in outcome.first if m.get("code") == "not-approved")
                finally:
                    await close_all(outcome)
                await wait_until(lambda: not live_matching([node], scope))  # stragglers closed
                await approve(node, "CR", inmate)
        print(json.dumps({"race": "approval", "rounds": len(OFFSETS) * REPEATS,
                          "joined_then_ended": joined, "refused": refused}))  # fmt: skip
        assert problems == [], problems[:20]
        assert joined > 0 and refused > 0  # it raced for real
    finally:
        await stop_server(node)
