"""No token and no signing secret ever reaches a log (issue #7; signaling/logs.py promises it).

A realistic workflow — roster and visit through the API, a kiosk and a family member in a
real call, a monitor, the staff event stream, token refresh, a directive that ends the call
(its notice carries an appeal token), a refused rejoin, an appeal decided and lifted, forged
and expired tokens — runs twice: in-process with every logger at DEBUG and the aiohttp access
log through signaling/listener.py as `parlor serve` does, and against `parlor serve` in its own
process with PARLOR_LOG_LEVEL=DEBUG, whose log file is then searched. Every token the
workflow saw (and its signature alone) and the HS256 secret must be absent from both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from bench.harness import ServerProcess
from signaling import keys as K
from signaling.app import create_app
from signaling.kiosk import ParlorClient
from signaling.listener import listen
from signaling.logs import JsonFormatter
from signaling.tokens import Tokens
from tests.conftest import SECRET, make_config
from tests.hardening.wire import UNLIMITED
from tests.integration.test_directives import LIGHT, directive_body

Mint = Callable[[str, str], str]
TOKEN = re.compile(r"#token=([A-Za-z0-9_\-.]+)")


class Api:
    def __init__(self, url: str, http: aiohttp.ClientSession, seen: set[str]) -> None:
        self.url, self.http, self.seen = url, http, seen

    async def __call__(
        self, method: str, path: str, body: Any = None, *, token: str | None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            answer = await response.json(content_type=None)
        self.collect(answer)
        return response.status, answer

    def collect(self, value: Any) -> None:
        """Every token an answer carries: `token` fields and #token= fragments of links."""
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "token" and isinstance(item, str):
                    self.seen.add(item)
                self.collect(item)
        elif isinstance(value, list):
            for item in value:
                self.collect(item)
        elif isinstance(value, str):
            self.seen.update(TOKEN.findall(value))


async def workflow(url: str, mint: Mint, secret: bytes) -> set[str]:
    """Drive a server through a day's work; return every token that crossed the wire."""
    seen: set[str] = set()
    operator, supervisor, auditor = (
        mint("operator:olga", "operator"),
        mint("operator:sue", "supervisor"),
        mint("auditor:a", "auditor"),
    )
    seen |= {operator, supervisor, auditor}
    async with aiohttp.ClientSession() as http:
        api = Api(url, http, seen)
        for path, body in [("/api/v1/facilities", {"id": "F1", "name": "North"}), ("/api/v1/devices", {"id": "K1", "facility": "F1"}),
                           ("/api/v1/inmates", {"id": "I1", "facility": "F1", "name": "Sam"}),
                           ("/api/v1/contacts", {"id": "C1", "name": "Alex", "minor": False}),
                           ("/api/v1/contacts", {"id": "C2", "name": "Bo", "minor": False})]:  # fmt: skip
            status, answer = await api("POST", path, body, token=operator)
            assert status == 201, answer
        for contact in ("C1", "C2"):
            status, _ = await api(
                "POST",
                f"/api/v1/contacts/{contact}/approvals",
                {"inmate": "I1", "status": "approved"},
                token=operator,
            )
            assert status == 200
        now = time.time()
        status, visit = await api("POST", "/api/v1/visits", {
            "inmate": "I1", "device": "K1", "contacts": ["C1", "C2"], "kind": "social",
            "starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
            "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600))}, token=operator)  # fmt: skip
        assert status == 201, visit
        family, kiosk_token = visit["join"]["C1"]["token"], visit["join"]["device"]["token"]

        # pages are fetched as a browser would: the fragment never leaves the browser
        for link in (visit["join"]["C1"]["url"], visit["join"]["device"]["url"]):
            path = (
                "/" + link.split("#", 1)[0].split("/", 3)[3]
            )  # the in-process base URL has port 0
            async with http.get(url + path) as response:
                assert response.status == 200

        events = await http.ws_connect(url.replace("http", "ws", 1) + "/api/v1/events")
        await events.send_json({"type": "auth", "token": operator})
        assert (await events.receive_json(timeout=5))["type"] == "ready"

        kiosk = ParlorClient(url, kiosk_token, visit["id"], **LIGHT)
        member = ParlorClient(url, family, visit["id"], **LIGHT)
        monitor = ParlorClient(url, operator, visit["id"], mode="monitor")
        try:
            for client in (kiosk, member, monitor):
                assert (await client.connect())["type"] == "joined"
            await asyncio.gather(
                kiosk.wait_frames("video", 10, 15), member.wait_frames("video", 10, 15)
            )
            status, _ = await api("GET", "/api/v1/kiosk/visit", token=kiosk_token)
            assert status == 200
            status, refreshed = await api("POST", "/api/v1/tokens/refresh", {}, token=family)
            assert status == 200
            status, directive = await api(
                "POST", "/api/v1/directives", directive_body("contact:C1"), token=operator
            )
            assert status == 201
            await asyncio.wait_for(member.closed.wait(), 5)
            for message in member.messages:
                api.collect(message)
            assert member.close_code == 4403
        finally:
            await asyncio.gather(kiosk.close(), member.close(), monitor.close())
        again = ParlorClient(url, refreshed["token"], visit["id"])
        assert (await again.connect(offer=False))["code"] == "suspended"
        await again.close()
        status, appeal = await api(
            "POST",
            f"/api/v1/directives/{directive['id']}/appeals",
            {"text": "please"},
            token=family,
        )
        assert status == 201
        status, _ = await api(
            "POST",
            f"/api/v1/appeals/{appeal['id']}/decide",
            {"decision": "lift", "note": "ok"},
            token=supervisor,
        )
        assert status == 200
        for path in (
            "/api/v1/sessions?live=false",
            "/api/v1/audit",
            "/api/v1/audit/verify",
            "/api/v1/reports/suspensions",
        ):
            status, _ = await api("GET", path, token=auditor)
            assert status == 200

        # refusals log their reasons: a forged, an expired and a truncated token
        claims = {"sub": "operator:x", "role": "operator", "iat": 1, "nbf": 1, "exp": 2, "jti": "j"}
        forged = jwt.encode(
            {**claims, "exp": int(now) + 600},
            b"another-secret-another-secret-another-secret",
            algorithm="HS256",
        )
        expired = jwt.encode(claims, secret, algorithm="HS256")
        seen |= {forged, expired}
        for bad in (forged, expired, family[:-5]):
            status, _ = await api("GET", "/api/v1/directives", token=bad)
            assert status == 401
            refused = ParlorClient(url, bad, visit["id"])
            assert (await refused.connect(offer=False))["type"] == "error"
            await refused.close()
        await events.close()
    assert len(seen) >= 10  # the staff, device, join, refresh and appeal tokens at least
    return seen


def assert_no_secrets(text: str, tokens: set[str], secret: bytes) -> None:
    assert secret.decode() not in text, "the HS256 secret is in the log"
    for token in tokens:
        signature = token.rsplit(".", 1)[-1]
        assert token not in text, f"a token is in the log: {token[:16]}..."
        if len(signature) >= 16:
            assert signature not in text, f"a token's signature is in the log: {signature[:8]}..."


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args))  # the arguments, before any formatting


async def test_no_token_or_secret_in_debug_logs_in_process(tmp_path):
    root = logging.getLogger()
    capture, level = Capture(), root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    app = create_app(make_config(tmp_path, **UNLIMITED))
    listening = await listen(app, "127.0.0.1", 0, app[K.CONNECTIONS])  # as `parlor serve` does
    try:
        issuer = app[K.TOKENS]
        tokens = await workflow(
            f"http://127.0.0.1:{listening.port}",
            lambda sub, role: issuer.issue(sub, role, 3600),
            SECRET,
        )
    finally:
        await listening.close()
        root.removeHandler(capture)
        root.setLevel(level)
    text = "\n".join(capture.lines)
    assert (
        '"logger": "aiohttp.access"' in text and "/api/v1/directives" in text
    )  # the log was captured
    assert '"logger": "parlor.ws"' in text and '"level": "debug"' in text
    assert_no_secrets(text, tokens, SECRET)


async def test_no_token_or_secret_in_the_log_of_parlor_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLOR_LOG_LEVEL", "DEBUG")  # read by ServerProcess for `parlor serve`
    server = ServerProcess(tmp_path)
    await server.start()
    issuer = Tokens(server.secret.encode())
    try:
        tokens = await workflow(
            server.url, lambda sub, role: issuer.issue(sub, role, 3600), server.secret.encode()
        )
    finally:
        await server.stop()
    text = server.log_path.read_text(errors="replace")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["logger"] == "aiohttp.access" for line in lines) and any(
        line["level"] == "debug" for line in lines
    )
    assert_no_secrets(text, tokens | {server.operator_token}, server.secret.encode())
