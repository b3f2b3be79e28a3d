"""Every REST route × every kind of caller → the status SPEC §3/§6 promises (issue #7).

The expectations are written out by hand below, from the SPEC's roles, not read from
`ROUTES[...].roles`: a matrix derived from the code under test could never fail. Each cell
gets a fresh resource (a new directive to lift, a live session to end, ...) and a valid body,
so an allowed caller gets the success status; a refused caller meets a real resource too and
must leave it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import jwt

from policy.rfc3339 import format_time
from signaling.api import ROUTES
from tests.conftest import SECRET, Server, make_visit, recordings_done, seed
from tests.integration.test_directives import directive_body

READ = {"operator": 200, "supervisor": 200, "auditor": 200}
STAFF_201 = {"operator": 201, "supervisor": 201}
STAFF_200 = {"operator": 200, "supervisor": 200}
RECORDING_READ = {"supervisor": 200, "auditor": 200, "operator": (403, "recordings-forbidden")}

# (method, path) -> {caller: status}. A caller not named gets 403 if its token is valid and
# 401 if it is not; a value may be (status, error code) where the code matters.
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/facilities"): STAFF_201,
    ("GET", "/api/v1/facilities"): READ,
    ("PATCH", "/api/v1/facilities/{id}"): STAFF_200,
    ("POST", "/api/v1/devices"): STAFF_201,
    ("GET", "/api/v1/devices"): READ,
    ("POST", "/api/v1/inmates"): STAFF_201,
    ("GET", "/api/v1/inmates"): READ,
    ("PATCH", "/api/v1/inmates/{id}"): STAFF_200,
    ("POST", "/api/v1/contacts"): STAFF_201,
    ("GET", "/api/v1/contacts"): READ,
    ("GET", "/api/v1/contacts/{id}"): READ,
    ("PATCH", "/api/v1/contacts/{id}"): STAFF_200,
    ("POST", "/api/v1/contacts/{id}/approvals"): STAFF_200,
    ("PUT", "/api/v1/contacts/{id}/guardians"): STAFF_200,
    ("GET", "/api/v1/approvals"): READ,
    ("POST", "/api/v1/visits"): STAFF_201,
    ("GET", "/api/v1/visits"): READ,
    ("GET", "/api/v1/visits/{id}"): READ,
    ("POST", "/api/v1/visits/{id}/reschedule"): STAFF_200,
    ("POST", "/api/v1/visits/{id}/kind"): STAFF_200,
    ("POST", "/api/v1/visits/{id}/cancel"): STAFF_200,
    # a family reads the state of its own visit only; the kiosk has its own route
    ("GET", "/api/v1/visits/{id}/state"): {
        **READ,
        "family": 200,
        "other-visit-family": (403, "wrong-visit"),
    },
    ("GET", "/api/v1/kiosk/visit"): {"kiosk": 200},
    # a family token refreshes itself, whichever visit it names
    ("POST", "/api/v1/tokens/refresh"): {"family": 200, "other-visit-family": 200, "kiosk": 200},
    ("POST", "/api/v1/directives"): STAFF_201,
    ("GET", "/api/v1/directives"): READ,
    ("GET", "/api/v1/directives/{id}"): READ,
    ("POST", "/api/v1/directives/{id}/lift"): STAFF_200,
    ("POST", "/api/v1/directives/{id}/confirm"): {"supervisor": 200},
    ("GET", "/api/v1/scopes/{scope}/coverage"): READ,
    # only the family member the directive matched; another visit's family is refused
    ("POST", "/api/v1/directives/{id}/appeals"): {
        "family": 201,
        "other-visit-family": (403, "not-affected"),
    },
    ("GET", "/api/v1/appeals"): READ,
    ("POST", "/api/v1/appeals/{id}/decide"): STAFF_200,
    ("GET", "/api/v1/sessions"): READ,
    ("POST", "/api/v1/sessions/{id}/end"): STAFF_200,
    ("GET", "/api/v1/audit"): READ,
    ("GET", "/api/v1/audit/verify"): READ,
    ("GET", "/api/v1/reports/suspensions"): READ,
    ("GET", "/api/v1/reports/visits"): READ,
    # SPEC §10: supervisors and auditors read recordings; an operator only where the facility
    # allows it (F1 does not); a read is a POST because it is audited with its reason
    ("GET", "/api/v1/recordings"): RECORDING_READ,
    ("GET", "/api/v1/recordings/{id}"): RECORDING_READ,
    ("POST", "/api/v1/recordings/{id}/play"): RECORDING_READ,
    ("POST", "/api/v1/recordings/{id}/download"): RECORDING_READ,
    ("POST", "/api/v1/recordings/{id}/export"): RECORDING_READ,
    ("POST", "/api/v1/recordings/{id}/hold"): {"supervisor": 200},
    ("POST", "/api/v1/recordings/{id}/release"): {"supervisor": 200},
}
AUDITED_READS = {path for (method, path) in EXPECTED if method == "POST" and path.startswith(
    "/api/v1/recordings/") and path.rsplit("/", 1)[1] in ("play", "download", "export")}  # fmt: skip

VALID_CALLERS = ("family", "other-visit-family", "kiosk", "operator", "supervisor", "auditor")
INVALID_CALLERS = ("none", "expired", "forged", "tampered", "alg-none")
CALLERS = VALID_CALLERS + INVALID_CALLERS
REFUSAL_CODES = {"none": "missing-token", "expired": "expired-token", "forged": "bad-token",
                 "tampered": "bad-token", "alg-none": "bad-token"}  # fmt: skip


def expected(method: str, path: str, caller: str) -> tuple[int, str | None]:
    value = EXPECTED[(method, path)].get(caller)
    if value is None:
        return (
            (401, REFUSAL_CODES[caller]) if caller in INVALID_CALLERS else (403, "role-not-allowed")
        )
    return value if isinstance(value, tuple) else (value, None)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def caller_tokens(
    server: Server, visit: dict[str, Any], other: dict[str, Any]
) -> dict[str, str | None]:
    now = int(time.time())
    operator_claims = {
        "sub": "operator:mallory",
        "role": "operator",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
    }
    family = visit["join"]["C1"]["token"]
    header, _, signature = family.split(".")
    return {
        "family": family,
        "other-visit-family": other["join"]["D1"]["token"],
        "kiosk": visit["join"]["device"]["token"],
        "operator": server.token("operator:olga", "operator"),
        "supervisor": server.token("operator:sue", "supervisor"),
        "auditor": server.token("auditor:audrey", "auditor"),
        "none": None,
        "expired": jwt.encode(
            {**operator_claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
            SECRET,
            algorithm="HS256",
        ),  # fmt: skip
        "forged": jwt.encode(
            operator_claims, b"not-the-server-secret-but-just-as-long-0123456789", algorithm="HS256"
        ),
        # a family member rewrites its own token into an operator's, keeping the signature
        "tampered": f"{header}.{b64(operator_claims)}.{signature}",
        "alg-none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(operator_claims)}.",
    }


@dataclass
class Cell:
    """One request of the matrix, and how to read the state it would change."""

    path: str
    body: Any = None
    probe: Callable[[], Awaitable[Any]] | None = None


class World:
    """The seeded roster plus factories of fresh resources, one per cell."""

    def __init__(self, server: Server, visit: dict[str, Any], other: dict[str, Any]) -> None:
        self.server, self.visit, self.other = server, visit, other
        self.n = count()
        self.clients: list[Any] = []
        self.directive_id = ""  # a directive for the GET /directives/{id} cells
        self.recording_id = ""  # a finalized recording of `visit` for the recording cells

    async def ok(
        self, method: str, path: str, body: Any = None, token: str = "operator:issuer"
    ) -> Any:
        status, answer = await self.server.api(
            method, path, body, token=self.server.token(token, "operator")
        )
        assert status in (200, 201), (method, path, status, answer)
        return answer

    async def read(self, path: str) -> Any:
        return await self.ok("GET", path, token="operator:probe")

    def counter(self, path: str) -> Callable[[], Awaitable[int]]:
        async def probe() -> int:
            return len(await self.read(path))

        return probe

    async def cell(self, method: str, path: str) -> Cell:
        n = next(self.n)
        later = time.time() + 86400 + n * 3600
        if method == "GET":
            return Cell(
                path.replace("{id}", self.ids_for_get(path)).replace("{scope}", "facility:F3")
            )
        if path == "/api/v1/facilities":
            return Cell(path, {"id": f"FX{n}", "name": f"Facility {n}"}, self.counter(path))
        if path == "/api/v1/facilities/{id}":
            await self.ok("POST", "/api/v1/facilities", {"id": f"FE{n}", "name": "Before"})
            return Cell(f"/api/v1/facilities/FE{n}", {"name": f"After {n}", "max_visit_seconds": 1800},
                        self.named("/api/v1/facilities", f"FE{n}", "max_visit_seconds"))  # fmt: skip
        if path == "/api/v1/inmates/{id}":
            await self.ok(
                "POST", "/api/v1/inmates", {"id": f"IE{n}", "facility": "F1", "name": "Before"}
            )
            return Cell(f"/api/v1/inmates/IE{n}", {"name": f"After {n}"},
                        self.named("/api/v1/inmates", f"IE{n}", "name"))  # fmt: skip
        if path == "/api/v1/contacts/{id}":
            await self.ok(
                "POST", "/api/v1/contacts", {"id": f"CE{n}", "name": "Before", "minor": False}
            )
            return Cell(f"/api/v1/contacts/CE{n}", {"minor": True},
                        self.named("/api/v1/contacts", f"CE{n}", "minor"))  # fmt: skip
        if path == "/api/v1/contacts/{id}/guardians":
            await self.ok(
                "POST", "/api/v1/contacts", {"id": f"CM{n}", "name": "Minor", "minor": True}
            )
            return Cell(f"/api/v1/contacts/CM{n}/guardians", {"guardians": ["C1"]},
                        self.named("/api/v1/contacts", f"CM{n}", "guardians"))  # fmt: skip
        if path.startswith("/api/v1/visits/{id}/"):
            booked = await self.ok("POST", "/api/v1/visits", {
                "inmate": "I1", "device": "K1", "contacts": ["C1"], "kind": "social",
                "starts_at": format_time(later), "ends_at": format_time(later + 1800)})  # fmt: skip
            body, field = {
                "reschedule": ({"starts_at": format_time(later + 600),
                                "ends_at": format_time(later + 2400)}, "starts_at"),
                "kind": ({"kind": "privileged"}, "kind"),
                "cancel": ({"reason": "lockdown", "note": "Search of the wing"}, "status"),
            }[path.rsplit("/", 1)[1]]  # fmt: skip

            async def visit_field() -> Any:
                return (await self.read(f"/api/v1/visits/{booked['id']}"))[field]

            return Cell(path.replace("{id}", booked["id"]), body, visit_field)
        if path == "/api/v1/devices":
            return Cell(path, {"id": f"KX{n}", "facility": "F1"}, self.counter(path))
        if path == "/api/v1/inmates":
            return Cell(
                path, {"id": f"IX{n}", "facility": "F1", "name": f"Inmate {n}"}, self.counter(path)
            )
        if path == "/api/v1/contacts":
            return Cell(
                path, {"id": f"CX{n}", "name": f"Contact {n}", "minor": False}, self.counter(path)
            )
        if path == "/api/v1/contacts/{id}/approvals":
            contact = f"CA{n}"
            await self.ok(
                "POST", "/api/v1/contacts", {"id": contact, "name": "Pending", "minor": False}
            )

            async def approval() -> str | None:
                contacts = await self.read("/api/v1/contacts")
                return (
                    next(c for c in contacts if c["id"] == contact).get("approvals", {}).get("I1")
                )

            return Cell(
                f"/api/v1/contacts/{contact}/approvals",
                {"inmate": "I1", "status": "approved"},
                approval,
            )
        if path == "/api/v1/visits":
            body = {"inmate": "I1", "device": "K1", "contacts": ["C1"], "kind": "social",
                    "starts_at": format_time(later), "ends_at": format_time(later + 1800)}  # fmt: skip
            return Cell(path, body, self.counter(path))
        if path == "/api/v1/tokens/refresh":
            return Cell(path, {})
        if path == "/api/v1/directives":
            return Cell(path, directive_body("contact:C4"), self.counter(path))
        if path == "/api/v1/directives/{id}/lift":
            d = await self.ok("POST", "/api/v1/directives", directive_body("contact:C4"))
            return Cell(
                path.replace("{id}", d["id"]),
                {"reason": "issued in error"},
                self.field(d["id"], "status"),
            )
        if path == "/api/v1/directives/{id}/confirm":
            d = await self.ok("POST", "/api/v1/directives", directive_body("facility:F3"))
            return Cell(path.replace("{id}", d["id"]), {}, self.field(d["id"], "confirmed_by"))
        if path == "/api/v1/directives/{id}/appeals":
            d = await self.ok(
                "POST", "/api/v1/directives", directive_body("contact:C1", action="end")
            )

            async def appeals() -> int:
                return len((await self.read(f"/api/v1/directives/{d['id']}"))["appeals"])

            return Cell(path.replace("{id}", d["id"]), {"text": "It was a birthday card"}, appeals)
        if path == "/api/v1/appeals/{id}/decide":
            d = await self.ok(
                "POST", "/api/v1/directives", directive_body("contact:C1", action="end")
            )
            status, appeal = await self.server.api("POST", f"/api/v1/directives/{d['id']}/appeals", {"text": "please"},
                                                   token=self.visit["join"]["C1"]["token"])  # fmt: skip
            assert status == 201, appeal

            async def decided() -> str:
                return next(
                    a for a in await self.read("/api/v1/appeals") if a["id"] == appeal["id"]
                )["status"]

            return Cell(
                path.replace("{id}", appeal["id"]),
                {"decision": "uphold", "note": "seen on camera"},
                decided,
            )
        if path.startswith("/api/v1/recordings/{id}/"):
            return await self.recording_cell(path)
        if path == "/api/v1/sessions/{id}/end":
            client = self.server.client(self.visit["join"]["C2"]["token"], self.visit["id"])
            self.clients.append(client)
            joined = await client.connect(offer=False)
            assert joined["type"] == "joined", joined

            async def live() -> bool:
                return any(
                    s["id"] == joined["session"] for s in await self.read("/api/v1/sessions")
                )

            return Cell(path.replace("{id}", joined["session"]), {}, live)
        raise AssertionError(f"no cell factory for {method} {path}: add one, and an expectation")

    async def recording_cell(self, path: str) -> Cell:
        """A read (probe: the reads audited), a hold or a release (probe: the hold) of the
        world's recording, left unheld for a hold and held for a release."""
        what, rid = path.rsplit("/", 1)[1], self.recording_id
        auditor = self.server.token("auditor:probe", "auditor")
        supervisor = self.server.token("operator:keeper", "supervisor")

        async def held() -> bool:
            status, recording = await self.server.api(
                "GET", f"/api/v1/recordings/{rid}", token=auditor
            )
            assert status == 200, recording
            return bool(recording["held"])

        if what in ("play", "download", "export"):

            async def reads() -> int:
                status, events = await self.server.api(
                    "GET", "/api/v1/audit?limit=5000", token=auditor
                )
                return sum(1 for e in events if e["subject"] == f"recording:{rid}"
                           and e["action"] != "recording.finalized")  # fmt: skip

            return Cell(path.replace("{id}", rid), {"reason": "incident review"}, reads)
        if (what == "hold") == await held():  # make it the other way round first
            other = "release" if what == "hold" else "hold"
            status, answer = await self.server.api(
                "POST",
                f"/api/v1/recordings/{rid}/{other}",
                {"reason": "setting up"},
                token=supervisor,
            )
            assert status == 200, answer
        return Cell(path.replace("{id}", rid), {"reason": "appeal A-1"}, held)

    def named(self, path: str, ident: str, name: str) -> Callable[[], Awaitable[Any]]:
        """A probe of one field of one listed resource."""

        async def probe() -> Any:
            return next(r for r in await self.read(path) if r["id"] == ident)[name]

        return probe

    def ids_for_get(self, path: str) -> str:
        if path in ("/api/v1/visits/{id}", "/api/v1/visits/{id}/state"):
            return self.visit["id"]
        if path == "/api/v1/contacts/{id}":
            return "C1"
        if path == "/api/v1/directives/{id}":
            return self.directive_id
        if path == "/api/v1/recordings/{id}":
            return self.recording_id
        return ""

    def field(self, directive_id: str, name: str) -> Callable[[], Awaitable[Any]]:
        async def probe() -> Any:
            return (await self.read(f"/api/v1/directives/{directive_id}"))[name]

        return probe


def test_every_route_has_a_hand_written_expectation():
    """A new route must be added to EXPECTED (and so be thought about) before it ships."""
    assert {(r.method, r.path) for r in ROUTES} == set(EXPECTED)


def test_auditors_never_write():
    """SPEC §3: an auditor reads and writes nothing: no POST route may expect an auditor's 2xx."""
    for (method, path), allowed in EXPECTED.items():
        if method != "GET" and path not in AUDITED_READS:  # a read of a recording is audited
            assert "auditor" not in allowed, (method, path)
        elif path not in ("/api/v1/kiosk/visit",):
            assert allowed.get("auditor") == 200, (method, path)


async def test_authorization_matrix(open_server):
    server = open_server
    await seed(server)
    status, _ = await server.api("POST", "/api/v1/facilities", {"id": "F3", "name": "Empty"})
    assert status == 201
    visit = await make_visit(server, ["C1", "C2"])
    other = await make_visit(server, ["D1"], inmate="I2", device="K2")
    world = World(server, visit, other)
    world.directive_id = (
        await world.ok("POST", "/api/v1/directives", directive_body("contact:C3"))
    )["id"]
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], size=(160, 120), fps=10)
    assert (await kiosk.connect())["recorded"] is True
    await asyncio.sleep(1.0)  # its media reaches the recording
    await kiosk.leave()
    [recording] = await recordings_done(server, visit["id"])
    assert recording["status"] == "finalized", recording
    world.recording_id = recording["id"]
    tokens = caller_tokens(server, visit, other)
    failures: list[str] = []
    cells = 0
    try:
        for route in ROUTES:
            cell = None
            for caller in CALLERS:
                # A refused caller leaves the resource as it was (checked below), so the next
                # caller meets the same one; after a success, the next caller gets a fresh one.
                cell = cell or await world.cell(route.method, route.path)
                before = await cell.probe() if cell.probe else None
                body = cell.body if route.method != "GET" else None
                status, answer = await server.api(
                    route.method, cell.path, body, token=tokens[caller]
                )
                cells += 1
                want, code = expected(route.method, route.path, caller)
                where = f"{caller:>18} {route.method} {cell.path}"
                if status != want:
                    failures.append(f"{where}: {status} (wanted {want}) {answer}")
                    continue
                if status >= 400:
                    if not (
                        isinstance(answer, dict)
                        and set(answer.get("error", {})) >= {"code", "message"}
                    ):
                        failures.append(
                            f"{where}: error body is not {{error: {{code, message}}}}: {answer}"
                        )
                    elif code is not None and answer["error"]["code"] != code:
                        failures.append(f"{where}: code {answer['error']['code']} (wanted {code})")
                if cell.probe is not None:
                    after = await cell.probe()
                    if (after != before) != (status < 300):
                        failures.append(
                            f"{where}: state {before!r} -> {after!r} with status {status}"
                        )
                if status < 300:
                    cell = None
    finally:
        for client in world.clients:
            await client.close()
    assert cells == len(ROUTES) * len(CALLERS)
    assert not failures, "\n".join(failures)
    status, verify = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and verify["ok"] is True
