"""Typed application keys: every shared object of one app (one node) lives on the app."""

from __future__ import annotations

import asyncio

from aiohttp import web

from policy.service import Policy
from policy.store import Store
from relay import DtlsCertificate
from signaling.approvals import Approvals
from signaling.bus import Bus
from signaling.config import Config
from signaling.directives import Directives
from signaling.enforcer import Enforcer
from signaling.guardians import Guardians
from signaling.listener import Connections
from signaling.metrics import Metrics
from signaling.presence import KioskPresence
from signaling.ratelimit import Limits
from signaling.recordings import Recordings
from signaling.registry import LiveSessions
from signaling.tokens import Tokens
from signaling.visits import Visits

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
POLICY = web.AppKey("policy", Policy)
TOKENS = web.AppKey("tokens", Tokens)
SESSIONS = web.AppKey("sessions", LiveSessions)
ENFORCER = web.AppKey("enforcer", Enforcer)
DIRECTIVES = web.AppKey("directives", Directives)  # a directive's life on this node
APPROVALS = web.AppKey("approvals", Approvals)  # an approval's life on this node
GUARDIANS = web.AppKey("guardians", Guardians)  # a change of a minor's guardians, live here
VISITS = web.AppKey("visits", Visits)  # a visit's changes on this node's live sessions
PRESENCE = web.AppKey("presence", KioskPresence)  # the kiosks' presence connections here
READY = web.AppKey("ready", asyncio.Event)  # set once directives are loaded and the store answers
METRICS = web.AppKey("metrics", Metrics)
DTLS_CERTIFICATE = web.AppKey("dtls_certificate", DtlsCertificate)  # every peer's, on this node
BUS = web.AppKey("bus", Bus)  # embedded (SQLite) or PostgreSQL: see signaling/bus.py
LIMITS = web.AppKey("limits", Limits)
RECORDINGS = web.AppKey("recordings", Recordings)  # the calls recorded here (SPEC §10)
CONNECTIONS = web.AppKey(
    "connections", Connections
)  # open HTTP connections (signaling/listener.py)
