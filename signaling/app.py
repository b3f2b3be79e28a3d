"""The aiohttp application of one Parlor node: routes in one place, resources in cleanup_ctx.

No module-level state: two apps (two nodes, two databases) can run in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from policy import replay
from policy.actor import SYSTEM
from policy.archive import RecordingArchive
from policy.errors import Conflict
from policy.service import Policy
from policy.store import AuditDraft, open_store
from relay import DtlsCertificate, pin_ice_addresses
from signaling import events, logs, scheduler, ws
from signaling import keys as K
from signaling.api import ROUTES, error_response, guarded, problem_response
from signaling.approvals import Approvals
from signaling.backlog import Backlog
from signaling.bus import Receivers, open_bus
from signaling.config import Config, ConfigError
from signaling.directives import STATE_ACCEPTED, Directives
from signaling.enforcer import Enforcer
from signaling.guardians import Guardians
from signaling.listener import Connections
from signaling.memory import trim_after_sessions_end
from signaling.metrics import Metrics
from signaling.openapi import document
from signaling.presence import KioskPresence
from signaling.protocol import API_INTERNAL, RESTARTING, Close, Reason
from signaling.ratelimit import Limits
from signaling.recordings import Grants, Recordings
from signaling.registry import LiveSessions
from signaling.tokens import Tokens
from signaling.visits import Visits

log = logging.getLogger("parlor.app")

STATIC = Path(__file__).resolve().parent.parent / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src {connect}; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


def content_security_policy(request: web.Request) -> str:
    """The pages may open WebSockets to this server and to the configured public URL only:
    'self' for browsers that match ws(s) to their own origin (CSP 3), the explicit ws(s)
    origins for the others."""
    sources = ["'self'", f"{'wss' if request.secure else 'ws'}://{request.host}"]
    public_url = request.app[K.CONFIG].public_url
    if public_url:
        scheme, _, rest = public_url.rstrip("/").partition("://")
        sources.append(f"{'wss' if scheme == 'https' else 'ws'}://{rest.split('/')[0]}")
    return CSP.format(connect=" ".join(dict.fromkeys(sources)))


@web.middleware
async def edge(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Tell the listener a request is being handled, so no header deadline runs meanwhile
    (signaling/listener.py); a body is read within the body timeout by `api.read_json`."""
    connections = request.app[K.CONNECTIONS]
    connections.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        connections.request_finished(request.transport)


@web.middleware
async def security_headers(request: web.Request, handler: Callable) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")
    rid = rid if rid.isalnum() and len(rid) <= 64 else secrets.token_hex(8)
    logs.request_id.set(rid)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.path.startswith("/api/") and exc.status >= 400:
            response = error_response(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason)
        else:
            exc.headers.setdefault("X-Content-Type-Options", "nosniff")
            exc.headers.setdefault("Referrer-Policy", "no-referrer")
            raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = problem_response(500, API_INTERNAL)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", rid)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.content_type == "text/html":
            response.headers.setdefault("Content-Security-Policy", content_security_policy(request))
            response.headers.setdefault("Cache-Control", "no-store")
        elif request.path.startswith("/api/"):
            # Tokens and personal data: never kept by a browser or a proxy cache.
            response.headers.setdefault("Cache-Control", "no-store")
    return response


def page(name: str) -> Callable[[web.Request], asyncio.Future]:
    async def serve(request: web.Request) -> web.FileResponse:
        path = STATIC / name
        if not path.exists():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "text/html; charset=utf-8"})

    return serve  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "node": request.app[K.CONFIG].node_id})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    ready = app[K.READY].is_set()
    if ready:
        try:
            await asyncio.wait_for(app[K.STORE].ping(), timeout=1.0)
        except Exception:
            ready = False
    body = {
        "ready": ready,
        "directives_loaded": app[K.READY].is_set(),
        "sessions": len(app[K.SESSIONS]),
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    m = app[K.METRICS]
    m.live_sessions.set(len(app[K.SESSIONS]))
    m.live_visits.set(len(app[K.SESSIONS].calls))
    m.asyncio_tasks.set(len(asyncio.all_tasks()))  # a leak of peers or sessions shows here
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def measure_loop_lag(app: web.Application, interval: float = 0.5) -> None:
    """How late the event loop wakes a sleeper: the lag every media packet also suffers."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        app[K.METRICS].lagged(max(0.0, loop.time() - started - interval))


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store, reload directives and close sessions a previous run left open,
    all before the first admission; end every live session and close the store on the way out."""
    store = app[K.STORE]
    _recordings_directory(app[K.CONFIG].recordings)
    await store.open()
    try:
        await check_state(app)
    except BaseException:
        await store.close()
        raise
    policy = app[K.POLICY]
    await policy.load()
    await policy.load_approvals()
    await app[K.DIRECTIVES].close_due()
    await app[K.PRESENCE].start()
    orphans = await store.list_sessions(live=True, node=app[K.CONFIG].node_id)
    if orphans:
        await store.end_orphan_sessions(
            app[K.CONFIG].node_id, "error",
            AuditDraft(SYSTEM.sub, "session.orphans-closed", f"node:{app[K.CONFIG].node_id}",
                       {"sessions": [s.id for s in orphans]}),
        )  # fmt: skip
    await app[K.RECORDINGS].recover()  # what a previous run of this node left unfinished
    await app[K.BUS].start()  # from here on, other nodes' directives reach this node
    app[K.READY].set()
    tasks = [
        asyncio.create_task(scheduler.run(app)),
        asyncio.create_task(measure_loop_lag(app)),
        asyncio.create_task(trim_after_sessions_end(app[K.SESSIONS], app[K.METRICS])),
    ]
    try:
        yield
    finally:
        app[K.READY].clear()
        await app[K.PRESENCE].stop()
        await app[K.DIRECTIVES].drain(1.0)  # counts of sessions just ended: let them land
        await app[K.BUS].stop()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        enforcer = app[K.ENFORCER]
        await asyncio.gather(
            *(
                enforcer.end_session(s, Reason.ERROR, Close.GOING_AWAY, message=RESTARTING)
                for s in list(app[K.SESSIONS].by_id.values())
            )
        )
        await enforcer.drain()
        await app[K.RECORDINGS].drain()
        await _write_backlog(enforcer.backlog)
        await store.close()


def _recordings_directory(path: str) -> None:
    """The recordings directory exists (made, mode 0700, if not) and can be written: a node
    that could not record would otherwise find out on its first call."""
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"PARLOR_RECORDINGS: cannot make {path}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"PARLOR_RECORDINGS: {path} is not a writable directory")


async def _write_backlog(backlog: Backlog, timeout: float = 3.0) -> None:
    """On the way out: a last try at the records an unavailable store could not take."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(backlog.flush(force=True), timeout)
    if len(backlog):
        log.warning(
            "shutting down with %d records the store did not take (the next start closes "
            "sessions left open as ended with 'error'): %s",
            len(backlog), "; ".join(backlog.lost()),
        )  # fmt: skip


async def check_state(app: web.Application) -> None:
    """SPEC §4: the store's state is a projection of the audit chain, and a node checks it at
    start-up (policy/replay.py). On a disagreement it refuses to start (`StateDisagrees`
    says which rows, how to investigate and how to override), unless started with
    `--accept-store-state`: then the disagreeing rows are restored to what the chain implies
    — the chain is the record of every authorised change; a row it does not imply was
    changed without one, and the node enforces the audited truth — in one transaction with
    the audit event `store.state-accepted`, which names the disagreements and who started
    the node, and the node starts."""
    config, store = app[K.CONFIG], app[K.STORE]
    for _ in range(3):  # a write by another node between the read and the restore: again
        report = replay.check(await store.state())
        if report.ok:
            return
        if not config.accept_store_state:
            raise replay.StateDisagrees(report, db=_shown_db(config.db))
        data = {
            "disagreements": [d.to_json() for d in report.disagreements],
            "resolution": "the rows were restored to what the audit chain implies",
            "started_by": started_by(config),
        }
        try:
            await store.restore(
                replay.restoration(report),
                AuditDraft(SYSTEM.sub, STATE_ACCEPTED, f"node:{config.node_id}", data),
            )
        except Conflict:
            continue
        log.warning(
            "started with --accept-store-state: %d disagreement(s) with the audit chain "
            "restored to the chain's values and recorded (%s): %s",
            len(report.disagreements), STATE_ACCEPTED, "; ".join(map(str, report.disagreements)),
        )  # fmt: skip
    report = replay.check(await store.state())
    if not report.ok:
        raise replay.StateDisagrees(report, db=_shown_db(config.db))


def started_by(config: Config) -> dict[str, Any]:
    """Who and what started this node, for the audit record of an override."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"node": config.node_id, "host": socket.gethostname(), "user": user,
            "pid": os.getpid(), "command": " ".join(sys.argv)}  # fmt: skip


def _shown_db(db: str) -> str:
    """The database as a command line names it, without a password."""
    scheme, sep, rest = db.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        credentials, host = rest.split("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return db


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> web.Application:
    app = web.Application(middlewares=[security_headers, edge], client_max_size=64 * 1024)
    store = open_store(config.db, clock)
    policy = Policy(store=store, rules=config.rules, clock=clock)
    sessions = LiveSessions()
    metrics_ = Metrics()
    app[K.CONFIG] = config
    app[K.STORE] = store
    app[K.POLICY] = policy
    tokens = Tokens(
        config.secret, leeway=config.token_leeway, public_key=config.jwt_public_key, clock=clock
    )
    app[K.TOKENS] = tokens
    app[K.SESSIONS] = sessions
    enforcer = Enforcer(
        sessions=sessions,
        policy=policy,
        appeal_base=config.base_url,
        metrics=metrics_,
        tokens=tokens,
        guardian_grace_seconds=config.guardian_grace_seconds,
    )
    app[K.ENFORCER] = enforcer
    recordings = Recordings(
        archive=RecordingArchive(store, clock), directory=Path(config.recordings),
        node_id=config.node_id, grants=Grants(config.secret, clock), clock=clock,
        backlog=enforcer.backlog,
    )  # fmt: skip
    enforcer.recordings = recordings
    app[K.RECORDINGS] = recordings
    directives = Directives(
        policy=policy, enforcer=enforcer, node_id=config.node_id, metrics=metrics_
    )
    app[K.DIRECTIVES] = directives
    visits = Visits(policy=policy, enforcer=enforcer, sessions=sessions)
    app[K.VISITS] = visits
    approvals = Approvals(policy=policy, enforcer=enforcer, visits=visits)
    app[K.APPROVALS] = approvals
    guardians = Guardians(policy=policy, sessions=sessions, enforcer=enforcer)
    app[K.GUARDIANS] = guardians
    app[K.PRESENCE] = KioskPresence(
        policy=policy, tokens=tokens, node_id=config.node_id,
        heartbeat_seconds=config.kiosk_heartbeat_seconds,
    )  # fmt: skip
    app[K.READY] = asyncio.Event()
    app[K.METRICS] = metrics_
    app[K.DTLS_CERTIFICATE] = DtlsCertificate()
    app[K.CONNECTIONS] = Connections(config.edge)
    app[K.LIMITS] = Limits.of(
        config.join_rate_per_ip, config.join_rate_per_identity, config.api_rate_per_identity
    )
    app[K.BUS] = open_bus(
        config, store, Receivers(directives, approvals, visits, guardians), app[K.READY]
    )
    if config.ice_addresses is not None:
        pin_ice_addresses(config.ice_addresses)
    app.cleanup_ctx.append(store_ctx)

    for route in ROUTES:
        app.router.add_route(route.method, route.path, guarded(route), name=route.handler.__name__)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", ws.handle)
    app.router.add_get("/api/v1/events", events.handle)
    app.router.add_get("/recordings/media/{grant}/{part}", recordings.serve)
    app.router.add_get("/", page("index.html"))
    app.router.add_get("/join/{visit}", page("join.html"))
    app.router.add_get("/kiosk", page("kiosk.html"))
    app.router.add_get("/console", page("console.html"))
    app.router.add_get("/appeal/{directive}", page("appeal.html"))
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app
