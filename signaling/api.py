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
from policy.approval import APPROVAL_STATUSES, Approval
from policy.audit import AuditEvent
from policy.errors import Forbidden, Malformed, NotFound, PolicyError, StoreUnavailable
from policy.recording import (
    ACCESSES,
    RECORDING_STATUSES,
    Recording,
    may_read,
    recorded,
    require_reader,
)
from policy.rfc3339 import format_time, parse_time
from policy.roster import Inmate, check_id
from policy.session import SessionRecord
from policy.visit import CANCEL_REASONS, VISIT_STATUSES, Visit
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
REFUSED_BY_STATE = (Error.SUSPENDED, Error.NOT_APPROVED, Error.VISIT_CANCELLED)


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
    """An admission refused over HTTP (a token refresh): 409 while the current state forbids
    it (suspended, not approved, cancelled), else 403; the directive's notice beside the
    error, as a refused join carries it."""
    body: dict[str, Any] = {"error": {"code": refusal.code, "message": refusal.message}}
    if refusal.notice is not None:
        body["directive"] = refusal.notice
    return web.json_response(body, status=409 if refusal.code in REFUSED_BY_STATE else 403)


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


async def update_facility(request: web.Request, actor: Actor) -> web.Response:
    facility = await request.app[K.POLICY].update_facility(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(facility.to_json())


async def create_device(request: web.Request, actor: Actor) -> web.Response:
    app = request.app
    device = await app[K.POLICY].create_device(actor, await read_json(request))
    token = app[K.TOKENS].issue(f"device:{device.id}", "kiosk", app[K.CONFIG].device_token_ttl)
    return created({**device.to_json(), "token": token})


async def list_devices(request: web.Request, actor: Actor) -> web.Response:
    """The kiosks, each with its presence (online since, or offline since and last seen), the
    visit live at it now, and its next booked visit."""
    app = request.app
    store, now = app[K.STORE], app[K.POLICY].clock()
    presence = {p.device: p for p in await store.list_presence()}
    live: dict[str, str] = {
        s.sub.removeprefix("device:"): s.visit
        for s in await store.list_sessions(live=True)
        if s.role == "kiosk" and s.mode == "participant"
    }
    upcoming: dict[str, Visit] = {}
    for visit in await store.list_visits(status="booked", after=now):
        upcoming.setdefault(visit.device, visit)
    answer = []
    for device in await store.list_devices():
        seen = presence.get(device.id)
        following = upcoming.get(device.id)
        answer.append({
            **device.to_json(),
            "presence": None if seen is None else {
                "state": seen.state, "node": seen.node, "since": format_time(seen.since),
                "last_seen": format_time(now if seen.state == "online" else seen.last_seen),
            },
            "in_call": live.get(device.id),
            "next_visit": None if following is None else {
                "id": following.id, "inmate": following.inmate, "kind": following.kind,
                "starts_at": format_time(following.starts_at),
                "ends_at": format_time(following.ends_at),
            },
        })  # fmt: skip
    return web.json_response(answer)


async def create_inmate(request: web.Request, actor: Actor) -> web.Response:
    inmate = await request.app[K.POLICY].create_inmate(actor, await read_json(request))
    return created(inmate.to_json())


async def list_inmates(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([i.to_json() for i in await request.app[K.STORE].list_inmates()])


async def update_inmate(request: web.Request, actor: Actor) -> web.Response:
    inmate = await request.app[K.POLICY].update_inmate(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(inmate.to_json())


async def create_contact(request: web.Request, actor: Actor) -> web.Response:
    contact = await request.app[K.POLICY].create_contact(actor, await read_json(request))
    return created(contact.to_json())


async def list_contacts(request: web.Request, actor: Actor) -> web.Response:
    return web.json_response([c.to_json() for c in await request.app[K.STORE].list_contacts()])


async def get_contact(request: web.Request, actor: Actor) -> web.Response:
    """A contact's page: their approvals per inmate, their visits, the directives naming them."""
    app = request.app
    store = app[K.STORE]
    contact = await app[K.POLICY].get_contact(request.match_info["id"])
    names = {i.id: i for i in await store.list_inmates()}
    approvals = await store.list_approvals(contact=contact.id)
    visits = await store.list_visits(contact=contact.id)
    named = [
        d for d in await store.list_directives()
        if d.scope == f"contact:{contact.id}"
        or (d.scope.startswith("pair:") and d.scope.endswith(f":{contact.id}"))
    ]  # fmt: skip
    return web.json_response({
        **contact.to_json(),
        "approval_records": [approval_json(a, names) for a in approvals],
        "visits": [v.to_json() for v in visits],
        "directives": [directive_json(request, d) for d in named],
    })  # fmt: skip


async def update_contact(request: web.Request, actor: Actor) -> web.Response:
    contact = await request.app[K.POLICY].update_contact(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(contact.to_json())


async def set_guardians(request: web.Request, actor: Actor) -> web.Response:
    """A minor's guardians, all of them (an empty list clears them): adult contacts. A visit
    with the minor is booked only with one of them on it; live, the minor is let in only
    while one of them is in the call (policy/guardian.py); a live call of the minor follows
    the change before this answers (signaling/guardians.py)."""
    contact = await request.app[K.GUARDIANS].set(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(contact.to_json())


def approval_json(approval: Approval, inmates: dict[str, Inmate]) -> dict[str, Any]:
    inmate = inmates.get(approval.inmate)
    return {
        **approval.to_json(),
        "inmate_name": inmate.name if inmate else approval.inmate,
        "facility": inmate.facility if inmate else None,
    }


async def set_approval(request: web.Request, actor: Actor) -> web.Response:
    """Ask for, grant, deny or withdraw an approval (signaling/approvals.py: `Approvals.set`):
    a denial or withdrawal ends the contact's live sessions with the inmate and cancels the
    visits left without an approved contact before this answers."""
    app = request.app
    decided = await app[K.APPROVALS].set(actor, request.match_info["id"], await read_json(request))
    contact = await app[K.POLICY].get_contact(decided.approval.contact)
    return web.json_response({
        **contact.to_json(),
        "approval": decided.approval.to_json(),
        "previous": decided.previous,
        "sessions_ended": len(decided.sessions_ended),
        "visits_cancelled": decided.visits_cancelled,
    })  # fmt: skip


async def list_approvals(request: web.Request, actor: Actor) -> web.Response:
    """Approvals, oldest change first (`?status=pending`: the queue staff work through)."""
    store = request.app[K.STORE]
    status = request.query.get("status")
    if status is not None and status not in APPROVAL_STATUSES:
        raise Malformed(Error.BAD_QUERY, f"status must be one of {', '.join(APPROVAL_STATUSES)}")
    inmates = {i.id: i for i in await store.list_inmates()}
    contacts = {c.id: c for c in await store.list_contacts()}
    answer = []
    for approval in await store.list_approvals(status=status):
        contact = contacts.get(approval.contact)
        answer.append({
            **approval_json(approval, inmates),
            "contact_name": contact.name if contact else approval.contact,
            "minor": contact.minor if contact else False,
        })  # fmt: skip
    return web.json_response(answer)


# -- visits ------------------------------------------------------------------------------
def join_links(tokens: Tokens, base: str, visit: Visit, grace: float) -> dict[str, Any]:
    """Per-contact join tokens and URLs (the token travels in the fragment), plus the kiosk's.
    They last until the visit's end plus `grace`: a visit moved later by less keeps them, and
    the family's page can still say that the visit ended, or why it was cancelled."""
    ttl = visit.ends_at - tokens.clock() + grace
    links: dict[str, Any] = {}
    for contact in visit.contacts:
        token = tokens.issue(f"contact:{contact}", "family", ttl, visit=visit.id)
        links[contact] = {"token": token, "url": f"{base}/join/{visit.id}#token={token}"}
    device_token = tokens.issue(f"device:{visit.device}", "kiosk", ttl)
    links["device"] = {"token": device_token, "url": f"{base}/kiosk#token={device_token}"}
    return links


def links_of(request: web.Request, visit: Visit) -> dict[str, Any]:
    config = request.app[K.CONFIG]
    return join_links(request.app[K.TOKENS], config.base_url, visit, config.join_link_grace_seconds)


async def create_visit(request: web.Request, actor: Actor) -> web.Response:
    visit = await request.app[K.VISITS].create(actor, await read_json(request))
    return created({**visit.to_json(), "join": links_of(request, visit)})


async def list_visits(request: web.Request, actor: Actor) -> web.Response:
    """Visits by start (`?facility=F&device=K&status=S&from=T&to=T`: those overlapping
    [from, to), e.g. one day)."""
    query = request.query
    status = query.get("status")
    if status is not None and status not in VISIT_STATUSES:
        raise Malformed(Error.BAD_QUERY, f"status must be one of {', '.join(VISIT_STATUSES)}")
    after = parse_time(query["from"], "from") if "from" in query else None
    before = parse_time(query["to"], "to") if "to" in query else None
    ids = {name: query.get(name) for name in ("facility", "device", "inmate", "contact")}
    for name, value in ids.items():
        if value is not None:
            check_id(value, name)
    visits = await request.app[K.STORE].list_visits(
        after=after, before=before, status=status, **ids
    )
    return web.json_response([v.to_json() for v in visits])


async def reschedule_visit(request: web.Request, actor: Actor) -> web.Response:
    """Move a visit (its id and links stay); fresh links are in the answer, for a move past
    what the old links cover (`links_kept` says whether they still do)."""
    app = request.app
    before = await app[K.POLICY].get_visit(request.match_info["id"])
    changed = await app[K.VISITS].reschedule(actor, before.id, await read_json(request))
    kept = changed.visit.ends_at <= before.ends_at + app[K.CONFIG].join_link_grace_seconds
    return web.json_response({
        **changed.visit.to_json(), "sessions_ended": len(changed.sessions_ended),
        "links_kept": kept, "join": links_of(request, changed.visit),
    })  # fmt: skip


async def change_visit_kind(request: web.Request, actor: Actor) -> web.Response:
    changed = await request.app[K.VISITS].change_kind(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(changed.visit.to_json())


async def cancel_visit(request: web.Request, actor: Actor) -> web.Response:
    """Cancel with a structured reason; a live visit's sessions end (told why) before this
    answers (signaling/visits.py)."""
    changed = await request.app[K.VISITS].cancel(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(
        {**changed.visit.to_json(), "sessions_ended": len(changed.sessions_ended)}
    )


async def visit_state(request: web.Request, actor: Actor) -> web.Response:
    """What a family's join link shows before joining: the visit's state and times, why it
    was cancelled, where it was moved from; read with the family's own token (sent as a
    bearer header: the page has it from its URL's fragment), for its own visit only."""
    app = request.app
    policy = app[K.POLICY]
    family = actor.role == "family"
    if family and actor.visit != request.match_info["id"]:
        raise Forbidden(Error.WRONG_VISIT, P.WRONG_VISIT.message())
    visit = await policy.get_visit(request.match_info["id"])
    contact = actor.subject_id if family else None
    if family and contact not in visit.contacts:
        raise Forbidden(Error.WRONG_VISIT, P.WRONG_VISIT.message())
    visit = policy.visit_changes.current(visit)
    now, early = policy.clock(), policy.rules.visit_early_join_seconds
    if visit.status == "cancelled":
        state = "cancelled"
    elif not visit.booked or now >= visit.ends_at:
        state = "ended"
    elif contact is not None and not policy.approvals.approved(contact, visit.inmate):
        state = "not-approved"
    else:
        state = "open" if visit.is_open(now, early=early) else "upcoming"
    inmate = await app[K.STORE].get_inmate(visit.inmate)
    facility = await app[K.STORE].get_facility(visit.facility)
    is_recorded = recorded(visit.kind, facility)
    full = visit.to_json()
    return web.json_response({
        "visit": visit.id, "state": state, "kind": visit.kind,
        "starts_at": full["starts_at"], "ends_at": full["ends_at"],
        "opens_at": format_time(visit.starts_at - early), "now": format_time(now),
        "monitored": visit.monitored,
        "notice": P.MONITORED_NOTICE if visit.monitored else P.PRIVATE_NOTICE,
        "recorded": is_recorded,
        "recorded_notice": P.RECORDED_NOTICE if is_recorded else None,
        "inmate": {"name": inmate.name if inmate else visit.inmate},
        "facility": {"name": facility.name if facility else visit.facility},
        "cancelled": None if state != "cancelled" else {
            "reason": visit.cancel_reason, "at": format_time(visit.cancelled_at),
            "text": P.cancelled_text(visit.cancel_reason, visit.cancel_note),
        },
        "moved": full["moved"] and {"from": full["moved"]["from"], "at": full["moved"]["at"]},
        "not_approved": P.NOT_APPROVED.message() if state == "not-approved" else None,
    })  # fmt: skip


async def visits_report(request: web.Request, actor: Actor) -> web.Response:
    facility = request.query.get("facility")
    if facility is not None:
        check_id(facility, "facility")
    return web.json_response(await request.app[K.VISITS].schedule.report(facility))


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


# -- recordings (SPEC §10) ----------------------------------------------------------------
RECORDING_READERS = ("operator", "supervisor", "auditor")  # operators: where the facility allows
TIMELINE = ("session.started", "session.ended", "monitor.refused", "visit.cancelled",
            "visit.ended")  # fmt: skip


def recording_json(recording: Recording) -> dict[str, Any]:
    data = recording.to_json()
    data.pop("path")  # file names stay on the server
    data.pop("media")
    data["parts"] = [participant for participant, _ in recording.parts]
    data["held"] = recording.held
    data["complete"] = recording.complete
    return data


async def list_recordings(request: web.Request, actor: Actor) -> web.Response:
    """Recordings, newest first (?visit=V&facility=F&from=T&to=T&status=S), of the facilities
    the caller may read."""
    query, store = request.query, request.app[K.STORE]
    ids = {name: query.get(name) for name in ("visit", "facility")}
    for name, value in ids.items():
        if value is not None:
            check_id(value, name)
    status = query.get("status")
    if status is not None and status not in RECORDING_STATUSES:
        raise Malformed(Error.BAD_QUERY, f"status must be one of {', '.join(RECORDING_STATUSES)}")
    after = parse_time(query["from"], "from") if "from" in query else None
    before = parse_time(query["to"], "to") if "to" in query else None
    found = await store.list_recordings(
        visit=ids["visit"], facility=ids["facility"], after=after, before=before, status=status
    )
    facilities = {f.id: f for f in await store.list_facilities()}
    readable = [r for r in found if may_read(actor, facilities.get(r.facility))]
    if found and not readable and actor.role == "operator":
        require_reader(actor, None)  # say why the list is empty
    return web.json_response([recording_json(r) for r in readable])


async def get_recording(request: web.Request, actor: Actor) -> web.Response:
    """A recording with its visit's timeline (joins, leaves, directives that ended sessions)
    from the audit chain, each at its offset on the recording's clock."""
    app = request.app
    recording, _ = await app[K.RECORDINGS].archive.get(actor, request.match_info["id"])
    events = await app[K.STORE].audit_about(f"visit:{recording.visit}")
    events += await app[K.STORE].audit_about(f"recording:{recording.id}")
    origin = recording.origin_at if recording.origin_at is not None else recording.started_at
    timeline = []
    for event in sorted(events, key=lambda e: e.seq):
        if event.action not in TIMELINE and not event.action.startswith("recording."):
            continue
        at = parse_time(event.at, "at")
        reason = event.data.get("reason")
        timeline.append({
            "seq": event.seq, "at": event.at, "offset_seconds": round(at - origin, 3),
            "action": event.action, "actor": event.actor, "session": event.data.get("session"),
            "role": event.data.get("role"), "mode": event.data.get("mode"), "reason": reason,
            "directive": reason.removeprefix("directive:")
            if isinstance(reason, str) and reason.startswith("directive:") else None,
        })  # fmt: skip
    visit = await app[K.STORE].get_visit(recording.visit)
    finalized = _finalized(events)
    return web.json_response({
        **recording_json(recording),
        "tracks": finalized.data.get("tracks", []) if finalized else [],
        "visit_kind": visit.kind if visit else None,
        "participants": await _participant_names(app, visit),
        "timeline": timeline,
    })  # fmt: skip


def _finalized(events: list[AuditEvent]) -> AuditEvent | None:
    """The last `recording.finalized` among `events`: what the file is, by the chain."""
    return next((e for e in reversed(events) if e.action == "recording.finalized"), None)


async def _participant_names(app: web.Application, visit: Visit | None) -> dict[str, str]:
    if visit is None:
        return {}
    inmate = await app[K.STORE].get_inmate(visit.inmate)
    names = {f"device:{visit.device}": inmate.name if inmate else visit.inmate}
    for contact_id in visit.contacts:
        contact = await app[K.STORE].get_contact(contact_id)
        names[f"contact:{contact_id}"] = contact.name if contact else contact_id
    return names


def _reader(access: str) -> Handler:
    async def read(request: web.Request, actor: Actor) -> web.Response:
        """Audit the access (who, why) first, then hand out a grant for the file."""
        app = request.app
        archive = app[K.RECORDINGS].archive
        recording, _ = await archive.get(actor, request.match_info["id"])
        why = await archive.accessed(actor, recording, access, await read_json(request))
        grant, issued = app[K.RECORDINGS].grants.issue(recording, access)
        answer: dict[str, Any] = {
            "recording": recording.id, "purpose": access, "reason": why,
            "url": f"/recordings/media/{grant}/call", "sha256": recording.sha256,
            "expires_at": format_time(issued.expires),
        }  # fmt: skip
        if access == "play":
            answer["parts"] = [
                {"participant": participant, "url": f"/recordings/media/{grant}/{part}"}
                for part, participant in app[K.RECORDINGS].renditions(recording)
            ]
        if access == "export":
            answer["manifest"] = await _manifest(app, recording, actor, why)
        return web.json_response(answer)

    read.__name__ = f"{access}_recording"
    return read


async def _manifest(
    app: web.Application, recording: Recording, actor: Actor, why: str
) -> dict[str, Any]:
    """The export's sidecar: what the file is and where its SHA-256 is in the audit chain."""
    finalized = _finalized(await app[K.STORE].audit_about(f"recording:{recording.id}"))
    return {
        "recording": recording.id, "visit": recording.visit, "facility": recording.facility,
        "sha256": recording.sha256, "finalized_at": format_time(recording.finalized_at),
        "origin_at": format_time(recording.origin_at),
        "duration_seconds": recording.duration_seconds, "complete": recording.complete,
        "incomplete_reason": recording.incomplete_reason,
        "audit": {"seq": finalized.seq, "hash": finalized.hash} if finalized else None,
        "exported_by": actor.sub, "reason": why,
    }  # fmt: skip


async def hold_recording(request: web.Request, actor: Actor) -> web.Response:
    held = await request.app[K.RECORDINGS].archive.hold(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(recording_json(held))


async def release_recording(request: web.Request, actor: Actor) -> web.Response:
    released = await request.app[K.RECORDINGS].archive.release(
        actor, request.match_info["id"], await read_json(request)
    )
    return web.json_response(recording_json(released))


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


STR, BOOL = {"type": "string"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}

SECONDS = {"type": ["number", "null"], "minimum": 60, "maximum": 86400}
FAMILY_AND_READERS = ("family", *READERS)

ROUTES: list[Route] = [
    Route("POST", "/api/v1/facilities", create_facility, STAFF, "Create a facility",
          _object({"id": STR, "name": STR, "max_visit_seconds": SECONDS}, ["id", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/facilities", list_facilities, READERS, "List facilities", tags=("roster",)),
    Route("PATCH", "/api/v1/facilities/{id}", update_facility, STAFF,
          "Rename a facility or change its maximum visit length (null: the server's default); "
          "a supervisor also its recording policy",
          _object({"name": STR, "max_visit_seconds": SECONDS, "recording": BOOL,
                   "recording_retention_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                   "operators_play_recordings": BOOL}, []), 200, ("roster",)),
    Route("POST", "/api/v1/devices", create_device, STAFF, "Register a kiosk; answers with its device token",
          _object({"id": STR, "facility": STR}, ["id", "facility"]), 201, ("roster",)),
    Route("GET", "/api/v1/devices", list_devices, READERS,
          "List kiosks with their presence, the call live at each and its next visit", tags=("roster",)),
    Route("POST", "/api/v1/inmates", create_inmate, STAFF, "Create an inmate",
          _object({"id": STR, "facility": STR, "name": STR}, ["id", "facility", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/inmates", list_inmates, READERS, "List inmates", tags=("roster",)),
    Route("PATCH", "/api/v1/inmates/{id}", update_inmate, STAFF, "Correct an inmate's name",
          _object({"name": STR}, ["name"]), 200, ("roster",)),
    Route("POST", "/api/v1/contacts", create_contact, STAFF, "Create a contact",
          _object({"id": STR, "name": STR, "minor": BOOL}, ["id", "name"]), 201, ("roster",)),
    Route("GET", "/api/v1/contacts", list_contacts, READERS, "List contacts with approvals", tags=("roster",)),
    Route("GET", "/api/v1/contacts/{id}", get_contact, READERS,
          "A contact with their approvals, visits and the directives that name them", tags=("roster",)),
    Route("PATCH", "/api/v1/contacts/{id}", update_contact, STAFF, "Change a contact's name or minor flag",
          _object({"name": STR, "minor": BOOL}, []), 200, ("roster",)),
    Route("PUT", "/api/v1/contacts/{id}/guardians", set_guardians, STAFF,
          "Set a minor's guardians (adult contacts; [] clears them): a minor is booked and let into a call "
          "only with one of them",
          _object({"guardians": {"type": "array", "items": STR}}, ["guardians"]), 200, ("roster",)),
    Route("POST", "/api/v1/contacts/{id}/approvals", set_approval, STAFF,
          "Ask for, approve, deny or withdraw a contact's approval for an inmate (a reason is needed to deny "
          "or withdraw); ends their live sessions with the inmate and cancels visits left without an approved contact",
          _object({"inmate": STR, "status": {"enum": ["pending", "approved", "denied"]}, "reason": STR},
                  ["inmate", "status"]), 200, ("roster",)),
    Route("GET", "/api/v1/approvals", list_approvals, READERS, "Approvals, oldest first (?status=pending: the queue)",
          tags=("roster",)),
    Route("POST", "/api/v1/visits", create_visit, STAFF, "Schedule a visit; answers with join tokens and links",
          _object({"inmate": STR, "device": STR, "contacts": {"type": "array", "items": STR},
                   "starts_at": TIME, "ends_at": TIME, "kind": {"enum": ["social", "privileged"]}},
                  ["inmate", "device", "contacts", "starts_at", "ends_at"]), 201, ("visits",)),
    Route("GET", "/api/v1/visits", list_visits, READERS,
          "List visits (?facility=F&device=K&status=S&from=T&to=T)", tags=("visits",)),
    Route("GET", "/api/v1/visits/{id}", get_visit, READERS, "Get a visit", tags=("visits",)),
    Route("POST", "/api/v1/visits/{id}/reschedule", reschedule_visit, STAFF,
          "Move a visit to a new window and/or another kiosk of its facility (its id and links stay)",
          _object({"starts_at": TIME, "ends_at": TIME, "device": STR}, ["starts_at", "ends_at"]), 200, ("visits",)),
    Route("POST", "/api/v1/visits/{id}/kind", change_visit_kind, STAFF,
          "Make a visit social or privileged (not once it can be joined)",
          _object({"kind": {"enum": ["social", "privileged"]}}, ["kind"]), 200, ("visits",)),
    Route("POST", "/api/v1/visits/{id}/cancel", cancel_visit, STAFF,
          "Cancel a visit with a structured reason (a note is needed for 'other'); ends its live sessions",
          _object({"reason": {"enum": list(CANCEL_REASONS)}, "note": STR}, ["reason"]), 200, ("visits",)),
    Route("GET", "/api/v1/visits/{id}/state", visit_state, FAMILY_AND_READERS,
          "What a family's link shows: upcoming, open, cancelled (why), moved (from when), ended", tags=("visits",)),
    Route("GET", "/api/v1/kiosk/visit", kiosk_visit, ("kiosk",), "The visit open at this kiosk now", tags=("visits",)),
    Route("POST", "/api/v1/tokens/refresh", refresh_token, ("family", "kiosk"),
          "Refresh a family or kiosk token (refused while suspended)", tags=("tokens",)),
    Route("POST", "/api/v1/directives", issue_directive, STAFF, "Issue a directive; ends or restricts matching live sessions",
          _object({"scope": STR, "action": {"enum": ["suspend", "end", "audio-only"]}, "reason": STR,
                   "legal_basis": STR, "expires_at": TIME, "starts_at": TIME, "await_confirmation": BOOL},
                  ["scope", "action", "reason", "legal_basis", "expires_at"]), 201, ("directives",)),
    Route("GET", "/api/v1/directives", list_directives, READERS, "List directives (?status=active)", tags=("directives",)),
    Route("GET", "/api/v1/directives/{id}", get_directive, READERS, "Get a directive with its appeals", tags=("directives",)),
    Route("POST", "/api/v1/directives/{id}/lift", lift_directive, STAFF, "Lift a directive",
          _object({"reason": STR}, ["reason"]), 200, ("directives",)),
    Route("POST", "/api/v1/directives/{id}/confirm", confirm_directive, ("supervisor",),
          "Confirm a broad directive (a supervisor other than the issuer); a pending one starts now",
          _object({}, []), 200, ("directives",)),
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
    Route("GET", "/api/v1/recordings", list_recordings, RECORDING_READERS,
          "Recordings, newest first (?visit=V&facility=F&from=T&to=T&status=S)", tags=("recordings",)),
    Route("GET", "/api/v1/recordings/{id}", get_recording, RECORDING_READERS,
          "A recording with its visit's timeline of joins, leaves and directives", tags=("recordings",)),
    *(Route("POST", f"/api/v1/recordings/{{id}}/{access}", _reader(access), RECORDING_READERS,
            f"{access.capitalize()} a recording (audited, with a reason): a short-lived grant URL",
            _object({"reason": STR}, ["reason"]), 200, ("recordings",)) for access in ACCESSES),
    Route("POST", "/api/v1/recordings/{id}/hold", hold_recording, ("supervisor",),
          "Keep a recording past retention until released (a reason; optionally a directive or appeal id)",
          _object({"reason": STR, "ref": STR}, ["reason"]), 200, ("recordings",)),
    Route("POST", "/api/v1/recordings/{id}/release", release_recording, ("supervisor",),
          "Release a recording's hold", _object({"reason": STR}, ["reason"]), 200, ("recordings",)),
    Route("GET", "/api/v1/reports/visits", visits_report, READERS,
          "Visits by status, kind and facility; cancellations by reason; no-shows (?facility=F)", tags=("reports",)),
]  # fmt: skip
