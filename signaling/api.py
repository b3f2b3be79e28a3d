"""The REST API (`/api/v1`, SPEC §6): one route table, from which the OpenAPI document is built.

Each handler receives the authenticated `Actor`; the table says which roles may call it.
Domain refusals (`PolicyError`) become `{"error": {"code", "message"}}` with their status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from policy import replay
from policy.actor import Actor
from policy.appeal import Appeal
from policy.errors import Forbidden, Malformed, NotFound, PolicyError, StoreUnavailable
from policy.rfc3339 import format_time
from policy.session import SessionRecord
from policy.visit import Visit
from signaling import admission
from signaling import keys as K
from signaling import protocol as P
from signaling.admission import Refusal
from signaling.directives import SESSION_END_REQUESTED
from signaling.protocol import Close, Error, Problem
from signaling.tokens import TokenError, Tokens

log = logging.getLogger("parlor.api")

STAFF = ("operator", "supervisor")
READERS = ("operator", "supervisor", "auditor")
MAX_BODY = 64 * 1024
RETRY_AFTER = 2  # seconds, told with a 503 `unavailable`: about the store's busy timeout
STATUS = {
    "malformed": 400,
    "forbidden": 403,
    "not-found": 404,
    "conflict": 409,
    "rule": 422,
    "unavailable": 503,
}

Handler = Callable[[web.Request, Actor], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: tuple[str, ...]
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of the request body, for the OpenAPI document
    status: int = 200
    tags: tuple[str, ...] = field(default=())


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def problem_response(
    status: int, problem: Problem, headers: dict[str, str] | None = None
) -> web.Response:
    return error_response(status, problem.code, problem.message(), headers)


def refusal_response(refusal: Refusal) -> web.Response:
    """An admission refused over HTTP (a token refresh): 409 while suspended, else 403; the
    directive's notice beside the error, as a refused join carries it."""
    body: dict[str, Any] = {"error": {"code": refusal.code, "message": refusal.message}}
    if refusal.notice is not None:
        body["directive"] = refusal.notice
    return web.json_response(body, status=409 if refusal.code == Error.SUSPENDED else 403)


def authenticate(request: web.Request) -> Actor:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError(Error.MISSING_TOKEN, "send 'Authorization: Bearer <token>'")
    return request.app[K.TOKENS].verify(token.strip()).actor


class BodyTimeout(Exception):
    """A request body that trickles in (slowloris on the body): 408, and the connection closes."""


async def _read_body(request: web.Request) -> bytes:
    # StreamReader.read(n) answers with what has arrived so far: a body split over several
    # TCP segments must be read to its end, or it is cut and refused as bad JSON.
    raw = b""
    while len(raw) <= MAX_BODY:
        chunk = await request.content.read(MAX_BODY + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    return raw


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Malformed(Error.BODY_TOO_LARGE, f"request bodies are limited to {MAX_BODY} bytes")
    timeout = request.app[K.CONFIG].edge.body_timeout
    try:
        raw = await asyncio.wait_for(_read_body(request), timeout)
    except TimeoutError:
        raise BodyTimeout() from None
    if len(raw) > MAX_BODY:
        raise Malformed(Error.BODY_TOO_LARGE, f"request bodies are limited to {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also int's 4300-digit limit, bad UTF-8
        raise Malformed(Error.BAD_JSON, "the request body is not valid JSON") from None


def guarded(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate, authorise by role, and turn domain errors into JSON error answers."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            actor = authenticate(request)
            wait = request.app[K.LIMITS].api_per_identity.check(actor.sub)
            if wait:
                return problem_response(
                    429, P.API_RATE_LIMITED, {"Retry-After": str(max(1, round(wait)))}
                )
            if actor.role not in route.roles:
                raise Forbidden(
                    Error.ROLE_NOT_ALLOWED, f"role {actor.role} may not {route.method} {route.path}"
                )
            return await route.handler(request, actor)
        except TokenError as exc:
            return error_response(401, exc.code, exc.message, {"WWW-Authenticate": "Bearer"})
        except BodyTimeout:
            response = problem_response(408, P.API_BODY_TIMEOUT)
            response.force_close()
            return response
        except StoreUnavailable as exc:
            return store_unavailable(request, exc.message)
        except PolicyError as exc:
            return error_response(STATUS[exc.kind], exc.code, exc.message)
        except OSError as exc:
            return store_unavailable(request, str(exc))

    handler.__name__ = route.handler.__name__
    return handler


def store_unavailable(request: web.Request, cause: str) -> web.Response:
    """503 `unavailable` with `Retry-After`, and one warning (the cause, never a traceback):
    nothing was done, so the client may simply try again."""
    log.warning("%s %s: store unavailable: %s", request.method, request.path, cause)
    return problem_response(503, P.API_STORE_UNREACHABLE, {"Retry-After": str(RETRY_AFTER)})


def created(value: Any) -> web.Response:
    return web.json_response(value, status=201)


# -- roster ------------------------------------------------------------------------------
async def create_facility(request: web.Request, actor: Actor) -> web.Response:
    facility = await request.app[K.POLICY].create_facility(actor, await read_json(request))
    return created(facility.to_json())


async def list_facilities(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([f.to_json() for f in await request.app[K.STORE].list_facilities()])


async def create_device(request: web.Request, actor: Actor) -> web.Response:
    app = request.app
    device = await app[K.POLICY].create_device(actor, await read_json(request))
    token = app[K.TOKENS].issue(f"device:{device.id}", "kiosk", app[K.CONFIG].device_token_ttl)
    return created({**device.to_json(), "token": token})


async def list_devices(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([d.to_json() for d in await request.app[K.STORE].list_devices()])


async def create_inmate(request: web.Request, actor: Actor) -> web.Response:
    inmate = await request.app[K.POLICY].create_inmate(actor, await read_json(request))
    return created(inmate.to_json())


async def list_inmates(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([i.to_json() for i in await request.app[K.STORE].list_inmates()])


async def create_contact(request: web.Request, actor: Actor) -> web.Response:
    contact = await request.app[K.POLICY].create_contact(actor, await read_json(request))
    return created(contact.to_json())


async def list_contacts(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([c.to_json() for c in await request.app[K.STORE].list_contacts()])


async def set_approval(request: web.Request, actor: Actor) -> web.Response:
    contact = await request.app[K.POLICY].set_approval(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(contact.to_json())


# -- visits ------------------------------------------------------------------------------
def join_links(tokens: Tokens, base: str, visit: Visit) -> dict[str, Any]:
    """Per-contact join tokens and URLs (the token travels in the fragment), plus the kiosk's."""
    ttl = visit.ends_at - tokens.clock() + 60
    links: dict[str, Any] = {}
    for contact in visit.contacts:
        token = tokens.issue(f"contact:{contact}", "family", ttl, visit=visit.id)
        links[contact] = {"token": token, "url": f"{base}/join/{visit.id}#token={token}"}
    device_token = tokens.issue(f"device:{visit.device}", "kiosk", ttl)
    links["device"] = {"token": device_token, "url": f"{base}/kiosk#token={device_token}"}
    return links


async def create_visit(request: web.Request, actor: Actor) -> web.Response:
    visit = await request.app[K.POLICY].create_visit(actor, await read_json(request))
    links = join_links(request.app[K.TOKENS], request.app[K.CONFIG].base_url, visit)
    return created({**visit.to_json(), "join": links})


async def list_visits(request: web.Request, actor: Actor) -> web.Response:
    visits = await request.app[K.STORE].list_visits()
    return web.json_response([v.to_json() for v in visits])


async def get_visit(request: web.Request, actor: Actor) -> web.Response:
    visit = await request.app[K.POLICY].get_visit(request.match_info["id"])
    return web.json_response(visit.to_json())


async def kiosk_visit(request: web.Request, actor: Actor) -> web.Response:
    """The visit open at the calling kiosk now (the kiosk page's start screen)."""
    policy, store = request.app[K.POLICY], request.app[K.STORE]
    current, upcoming = await policy.current_visit(actor.subject_id)

    async def describe(visit: Visit) -> dict[str, Any]:
        inmate = await store.get_inmate(visit.inmate)
        contacts = [await store.get_contact(c) for c in visit.contacts]
        return {
            **visit.to_json(),
            "inmate": {"id": visit.inmate, "name": inmate.name if inmate else visit.inmate},
            "contacts": [{"id": c.id, "name": c.name} for c in contacts if c is not None],
        }

    if current is None:
        body: dict[str, Any] = {
            "error": {"code": P.NO_VISIT_AT_KIOSK.code, "message": P.NO_VISIT_AT_KIOSK.message()}
        }
        if upcoming is not None:
            body["next"] = await describe(upcoming)
        return web.json_response(body, status=404)
    return web.json_response({"visit": await describe(current)})


async def refresh_token(request: web.Request, actor: Actor) -> web.Response:
    """A fresh token for a family member or kiosk: refused while a directive suspends them."""
    app = request.app
    outcome = await admission.refresh(app, actor)
    if isinstance(outcome, Refusal):
        return refusal_response(outcome)
    return web.json_response(
        {"token": app[K.TOKENS].issue(actor.sub, actor.role, outcome, visit=actor.visit)}
    )


# -- directives --------------------------------------------------------------------------
def directive_json(request: web.Request, directive: Any) -> dict[str, Any]:
    return directive.to_json(appeal_base=request.app[K.CONFIG].base_url)


async def issue_directive(request: web.Request, actor: Actor) -> web.Response:
    """Validate and commit, then end or restrict every matching live session, then answer
    (signaling/directives.py: `Directives.issue`).

    The answer's `Server-Timing` header says where the time went (`commit`, `enforce`: until
    the last matching session here is closed, `record`: its count written), for the console's
    network panel and the benches.
    """
    issued = await request.app[K.DIRECTIVES].issue(actor, await read_json(request))
    response = created(directive_json(request, issued.directive))
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={1000 * seconds:.1f}"
        for name, seconds in (
            ("commit", issued.commit),
            ("enforce", issued.enforce),
            ("record", issued.record),
        )
    )
    return response


async def list_directives(request: web.Request, actor: Actor) -> web.Response:
    status = request.query.get("status")
    directives = await request.app[K.STORE].list_directives(status=status)
    return web.json_response([directive_json(request, d) for d in directives])


async def get_directive(request: web.Request, actor: Actor) -> web.Response:
    directive = await request.app[K.POLICY].get_directive(request.match_info["id"])
    appeals = await request.app[K.STORE].list_appeals(directive=directive.id)
    return web.json_response(
        {**directive_json(request, directive), "appeals": [appeal_json(a) for a in appeals]}
    )


async def lift_directive(request: web.Request, actor: Actor) -> web.Response:
    directive = await request.app[K.DIRECTIVES].lift(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(directive_json(request, directive))


async def confirm_directive(request: web.Request, actor: Actor) -> web.Response:
    await read_json(request)
    directive = await request.app[K.DIRECTIVES].confirm(actor, request.match_info["id"])
    return web.json_response(directive_json(request, directive))


async def scope_coverage(request: web.Request, actor: Actor) -> web.Response:
    """How long a broad scope has been restricted without a second supervisor today, and how
    long a new unconfirmed directive could stay unconfirmed (policy/coverage.py)."""
    coverage = await request.app[K.POLICY].scope_coverage(request.match_info["scope"])
    return web.json_response(coverage.to_json())


def appeal_json(appeal: Appeal) -> dict[str, Any]:
    return {
        "id": appeal.id, "directive": appeal.directive, "filed_by": appeal.filed_by, "text": appeal.text,
        "filed_at": format_time(appeal.filed_at), "status": appeal.status, "decided_by": appeal.decided_by,
        "decided_at": format_time(appeal.decided_at), "decision_note": appeal.decision_note,
    }  # fmt: skip


async def file_appeal(request: web.Request, actor: Actor) -> web.Response:
    appeal = await request.app[K.POLICY].file_appeal(
        actor, request.match_info["id"], await read_json(request)
    )
    return created(appeal_json(appeal))


async def list_appeals(request: web.Request, actor: Actor) -> web.Response:
    appeals = await request.app[K.STORE].list_appeals()
    status = request.query.get("status")
    return web.json_response(
        [appeal_json(a) for a in appeals if status is None or a.status == status]
    )


async def decide_appeal(request: web.Request, actor: Actor) -> web.Response:
    appeal = await request.app[K.DIRECTIVES].decide_appeal(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(appeal_json(appeal))


# -- sessions, audit, reports ------------------------------------------------------------
def session_json(record: SessionRecord) -> dict[str, Any]:
    return {
        "id": record.id, "visit": record.visit, "sub": record.sub, "role": record.role,
        "mode": record.mode, "node": record.node, "subject_keys": list(record.keys),
        "started_at": format_time(record.started_at), "ended_at": format_time(record.ended_at),
        "end_reason": record.end_reason,
    }  # fmt: skip


async def list_sessions(request: web.Request, actor: Actor) -> web.Response:
    live = request.query.get("live", "true") != "false"
    records = await request.app[K.STORE].list_sessions(live=live)
    return web.json_response([session_json(r) for r in records])


async def end_session(request: web.Request, actor: Actor) -> web.Response:
    app = request.app
    session_id = request.match_info["id"]
    session = app[K.SESSIONS].by_id.get(session_id)
    if session is None:
        record = await app[K.STORE].get_session(session_id)
        if record is None or record.ended_at is not None:
            raise NotFound(Error.UNKNOWN_SESSION, f"no live session {session_id!r}")
        # Live on another node: the request travels on the cluster bus (signaling/bus.py) and
        # that node ends the session. 202: durably requested, done within the bus's delivery time.
        await app[K.POLICY].audit(
            actor, SESSION_END_REQUESTED, f"visit:{record.visit}",
            {"session": session_id, "by": actor.sub, "node": record.node},
        )  # fmt: skip
        return web.json_response({**session_json(record), "end_requested": True}, status=202)
    await app[K.ENFORCER].end_session(session, actor.sub, Close.REFUSED, message=P.STAFF_ENDED)
    record = await app[K.STORE].get_session(session_id)
    assert record is not None
    return web.json_response(session_json(record))


async def list_audit(request: web.Request, actor: Actor) -> web.Response:
    try:
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "500")), 5000)
    except ValueError:
        raise Malformed(Error.BAD_QUERY, "after and limit must be integers") from None
    # a negative LIMIT means "no limit" to SQLite: it would lift the cap; past 2**63 - 1 the
    # driver raises OverflowError (a 500)
    if not 0 <= after < 2**63 or limit < 1:
        raise Malformed(Error.BAD_QUERY, "after must be between 0 and 2**63 - 1, and limit >= 1")
    events = await request.app[K.STORE].audit_events(after=after, limit=limit)
    return web.json_response([e.to_json() for e in events])


async def verify_audit(request: web.Request, actor: Actor) -> web.Response:
    report = replay.verify(await request.app[K.STORE].state())  # seals, and rows replayed
    return web.json_response(report.to_json())


async def suspension_report(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response(await request.app[K.POLICY].suspension_report())


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


STR, BOOL = {"type": "string"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}

ROUTES: list[Route] = [
    Route("POST", "/api/v1/facilities", create_facility, STAFF, "Create a facility",
          _object({"id": STR, "name": STR}, ["id", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/facilities", list_facilities, READERS, "List facilities", tags=("roster",)),
    Route("POST", "/api/v1/devices", create_device, STAFF, "Register a kiosk; answers with its device token",
          _object({"id": STR, "facility": STR}, ["id", "facility"]), 201, ("roster",)),
    Route("GET", "/api/v1/devices", list_devices, READERS, "List kiosks", tags=("roster",)),
    Route("POST", "/api/v1/inmates", create_inmate, STAFF, "Create an inmate",
          _object({"id": STR, "facility": STR, "name": STR}, ["id", "facility", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/inmates", list_inmates, READERS, "List inmates", tags=("roster",)),
    Route("POST", "/api/v1/contacts", create_contact, STAFF, "Create a contact",
          _object({"id": STR, "name": STR, "minor": BOOL}, ["id", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/contacts", list_contacts, READERS, "List contacts with approvals", tags=("roster",)),
    Route("POST", "/api/v1/contacts/{id}/approvals", set_approval, STAFF, "Approve, deny or reset a contact for an inmate",
          _object({"inmate": STR, "status": {"enum": ["pending", "approved", "denied"]}}, ["inmate", "status"]),
          200, ("roster",)),
    Route("POST", "/api/v1/visits", create_visit, STAFF, "Schedule a visit; answers with join tokens and links",
          _object({"inmate": STR, "device": STR, "contacts": {"type": "array", "items": STR},
                   "starts_at": TIME, "ends_at": TIME, "kind": {"enum": ["social", "privileged"]}},
                  ["inmate", "device", "contacts", "starts_at", "ends_at"]), 201, ("visits",)),
    Route("GET", "/api/v1/visits", list_visits, READERS, "List visits", tags=("visits",)),
    Route("GET", "/api/v1/visits/{id}", get_visit, READERS, "Get a visit", tags=("visits",)),
    Route("GET", "/api/v1/kiosk/visit", kiosk_visit, ("kiosk",), "The visit open at this kiosk now", tags=("visits",)),
    Route("POST", "/api/v1/tokens/refresh", refresh_token, ("family", "kiosk"),
          "Refresh a family or kiosk token (refused while suspended)", tags=("tokens",)),
    Route("POST", "/api/v1/directives", issue_directive, STAFF, "Issue a directive; ends or restricts matching live sessions",
          _object({"scope": STR, "action": {"enum": ["suspend", "end", "audio-only"]}, "reason": STR,
                   "legal_basis": STR, "expires_at": TIME, "starts_at": TIME},
                  ["scope", "action", "reason", "legal_basis", "expires_at"]), 201, ("directives",)),
    Route("GET", "/api/v1/directives", list_directives, READERS, "List directives (?status=active)", tags=("directives",)),
    Route("GET", "/api/v1/directives/{id}", get_directive, READERS, "Get a directive with its appeals", tags=("directives",)),
    Route("POST", "/api/v1/directives/{id}/lift", lift_directive, STAFF, "Lift a directive",
          _object({"reason": STR}, ["reason"]), 200, ("directives",)),
    Route("POST", "/api/v1/directives/{id}/confirm", confirm_directive, ("supervisor",),
          "Confirm a broad directive (a supervisor other than the issuer)", _object({}, []), 200, ("directives",)),
    Route("GET", "/api/v1/scopes/{scope}/coverage", scope_coverage, READERS,
          "A broad scope's unconfirmed time in the last 24 hours, and what a new directive would get",
          tags=("directives",)),
    Route("POST", "/api/v1/directives/{id}/appeals", file_appeal, ("family",), "Appeal a directive that affected you",
          _object({"text": STR}, ["text"]), 201, ("appeals",)),
    Route("GET", "/api/v1/appeals", list_appeals, READERS, "List appeals (?status=open)", tags=("appeals",)),
    Route("POST", "/api/v1/appeals/{id}/decide", decide_appeal, STAFF, "Uphold a directive or lift it on appeal",
          _object({"decision": {"enum": ["uphold", "lift"]}, "note": STR}, ["decision", "note"]), 200, ("appeals",)),
    Route("GET", "/api/v1/sessions", list_sessions, READERS, "Live sessions with their subject keys", tags=("sessions",)),
    Route("POST", "/api/v1/sessions/{id}/end", end_session, STAFF, "End one live session", _object({}, []), 200,
          ("sessions",)),
    Route("GET", "/api/v1/audit", list_audit, READERS, "Audit events (?after=SEQ&limit=N)", tags=("audit",)),
    Route("GET", "/api/v1/audit/verify", verify_audit, READERS, "Recompute the audit hash chain", tags=("audit",)),
    Route("GET", "/api/v1/reports/suspensions", suspension_report, READERS, "Suspension report", tags=("reports",)),
]  # fmt: skip
