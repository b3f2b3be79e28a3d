"""The aiohttp application of one Parlor node: routes in one place, resources in cleanup_ctx.

No module-level state: two apps (two nodes, two databases) can run in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from policy.actor import SYSTEM
from policy.service import Policy
from policy.store import AuditDraft, open_store
from relay import pin_ice_addresses
from signaling import events, logs, scheduler, ws
from signaling import keys as K
from signaling.api import ROUTES, error_response, guarded, problem_response
from signaling.bus import open_bus
from signaling.config import Config
from signaling.directives import Directives
from signaling.enforcer import Enforcer
from signaling.listener import Connections
from signaling.memory import trim_after_sessions_end
from signaling.metrics import Metrics
from signaling.openapi import document
from signaling.protocol import API_INTERNAL, RESTARTING, Close, Reason
from signaling.ratelimit import Limits
from signaling.registry import LiveSessions
from signaling.tokens import Tokens

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
    await store.open()
    policy = app[K.POLICY]
    await policy.load()
    await app[K.DIRECTIVES].close_due()
    orphans = await store.list_sessions(live=True, node=app[K.CONFIG].node_id)
    if orphans:
        await store.end_orphan_sessions(
            app[K.CONFIG].node_id, "error",
            AuditDraft(SYSTEM.sub, "session.orphans-closed", f"node:{app[K.CONFIG].node_id}",
                       {"sessions": [s.id for s in orphans]}),
        )  # fmt: skip
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
        await store.close()


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
    )
    app[K.ENFORCER] = enforcer
    directives = Directives(
        policy=policy, enforcer=enforcer, node_id=config.node_id, metrics=metrics_
    )
    app[K.DIRECTIVES] = directives
    app[K.READY] = asyncio.Event()
    app[K.METRICS] = metrics_
    app[K.CONNECTIONS] = Connections(config.edge)
    app[K.LIMITS] = Limits.of(
        config.join_rate_per_ip, config.join_rate_per_identity, config.api_rate_per_identity
    )
    app[K.BUS] = open_bus(config, store, directives, app[K.READY])
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
    app.router.add_get("/", page("index.html"))
    app.router.add_get("/join/{visit}", page("join.html"))
    app.router.add_get("/kiosk", page("kiosk.html"))
    app.router.add_get("/console", page("console.html"))
    app.router.add_get("/appeal/{directive}", page("appeal.html"))
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app
