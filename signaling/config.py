"""Configuration: environment variables, overridden by command-line flags (SPEC §7).

A bad value stops start-up with one clear line (`ConfigError`), never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.service import Rules
from signaling.listener import EdgeLimits
from signaling.ratelimit import Rate

MIN_SECRET_BYTES = 32
CODECS = ("VP8", "H264")


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message says which and why."""


@dataclass(frozen=True)
class Config:
    secret: bytes
    db: str = "./var/parlor.db"
    # Where recordings are written (SPEC §10). In a cluster: storage every node reaches (a
    # call is recorded by the node hosting it, read and swept by any).
    recordings: str = "./var/recordings"
    host: str = "127.0.0.1"
    port: int = 8080
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    ice_addresses: list[str] | None = None
    public_url: str | None = (
        None  # e.g. https://visits.example.org; used in links and Origin checks
    )
    node_url: str | None = (
        None  # this node's own address in a cluster (redirects); default base_url
    )
    codec: str = "VP8"
    # Stable across restarts, so a restarted node closes the sessions its previous run left open.
    node_id: str = field(default_factory=socket.gethostname)
    rules: Rules = field(default_factory=Rules)
    token_leeway: float = 30.0
    device_token_ttl: float = 30 * 86400
    jwt_public_key: str | None = None  # PEM of an external issuer (EdDSA or RS256)
    tick_seconds: float = 0.5  # how often expiry/lapse and visit ends are checked at most
    max_message_bytes: int = 64 * 1024
    max_participants: int = 5  # kiosk + 4 contacts
    join_rate_per_ip: Rate = Rate(120, 2.0)
    join_rate_per_identity: Rate = Rate(20, 0.5)
    api_rate_per_identity: Rate = Rate(300, 20.0)
    allowed_origins: tuple[str, ...] = ()  # besides the public URL's and the server's own
    max_sessions_per_subject: int = 10  # live sessions of one person or device on this node
    max_calls: int = 0  # calls this node starts relaying at most (0: no fixed limit)
    overload_lag_seconds: float = 0.1  # mean event-loop lag above which no new call starts (README: Capacity)
    edge: EdgeLimits = field(default_factory=EdgeLimits)  # request timeouts, connections per IP
    kiosk_heartbeat_seconds: float = 10.0  # a kiosk's presence heartbeat (signaling/presence.py)
    # A family's join link works until its visit's end plus this: a visit moved later by up to
    # this much keeps its links, and the link shows the visit ended afterwards.
    join_link_grace_seconds: float = 7 * 86400
    # A minor whose last guardian left the call is paused this long before the session ends
    # (`guardian-left`) unless a guardian returns (policy/guardian.py).
    guardian_grace_seconds: float = 60.0
    # Start although the store disagrees with its audit chain, restoring the chain's values
    # (signaling/app.py check_state). A flag for one start, deliberately no environment
    # variable: an override left in an environment file would silence every later check.
    accept_store_state: bool = False

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {number}")
    return number


def _seconds(
    value: str, name: str, *, low: float | None = None, high: float | None = None
) -> float:
    """A finite number of seconds: positive, or at least `low` when given; at most `high`."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
    if low is None and number <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low or 0:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{name} must be {bounds} seconds, got {value!r}")
    return number


def parse_ice_servers(text: str) -> list[dict[str, Any]]:
    try:
        servers = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"PARLOR_ICE_SERVERS is not JSON: {exc.msg}") from None
    if not isinstance(servers, list):
        raise ConfigError(
            'PARLOR_ICE_SERVERS must be a JSON list, e.g. [{"urls": "stun:stun.example.org"}]'
        )
    for server in servers:
        urls = server.get("urls") if isinstance(server, dict) else None
        if not (
            isinstance(urls, str)
            or (isinstance(urls, list) and all(isinstance(u, str) for u in urls))
        ):
            raise ConfigError(
                "every PARLOR_ICE_SERVERS entry needs 'urls' (a string or list of strings)"
            )
        url_list = [urls] if isinstance(urls, str) else urls
        if not all(u.startswith(("stun:", "stuns:", "turn:", "turns:")) for u in url_list):
            raise ConfigError(
                "PARLOR_ICE_SERVERS urls must start with stun:, stuns:, turn: or turns:"
            )
    return servers


def secret_path(db: str) -> Path:
    """Where `parlor demo` keeps the secret it generated: beside the SQLite file."""
    if db.startswith(("postgresql://", "postgres://")):
        return Path("./var/secret")
    return Path(db).expanduser().resolve().parent / "secret"


def ensure_demo_secret(db: str) -> bytes:
    """Generate and store a secret (mode 0600) unless one is stored already."""
    path = secret_path(db)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def load_config(env: Mapping[str, str], **flags: Any) -> Config:
    """Build the configuration; flags (not None) beat the environment."""

    def pick(flag: str, var: str) -> Any:
        value = flags.get(flag)
        return value if value is not None else env.get(var)

    db = pick("db", "PARLOR_DB") or "./var/parlor.db"
    raw_secret = pick("secret", "PARLOR_SECRET")
    if raw_secret is None:
        stored = secret_path(db)
        if not stored.exists():
            raise ConfigError(
                "PARLOR_SECRET is not set (at least 32 bytes; e.g. `openssl rand -base64 48`), "
                "and no secret generated by `parlor demo` was found"
            )
        secret = stored.read_bytes().strip()
    else:
        secret = raw_secret.encode() if isinstance(raw_secret, str) else raw_secret
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"PARLOR_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}"
        )

    host = pick("host", "PARLOR_HOST") or "127.0.0.1"
    port_value = pick("port", "PARLOR_PORT")
    port = _int(str(port_value), "port", 0, 65535) if port_value is not None else 8080

    ice_text = pick("ice_servers", "PARLOR_ICE_SERVERS")
    ice_servers = parse_ice_servers(ice_text) if ice_text not in (None, "") else []
    addresses_text = pick("ice_addresses", "PARLOR_ICE_ADDRESSES")
    ice_addresses = None
    if addresses_text:
        ice_addresses = [a.strip() for a in addresses_text.split(",") if a.strip()]
        for address in ice_addresses:
            try:
                socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
            except OSError:
                raise ConfigError(
                    f"PARLOR_ICE_ADDRESSES: {address!r} is not an IP address"
                ) from None

    codec = (pick("codec", "PARLOR_CODEC") or "VP8").upper()
    if codec not in CODECS:
        raise ConfigError(f"PARLOR_CODEC must be one of {', '.join(CODECS)}, got {codec!r}")

    public_url = pick("public_url", "PARLOR_PUBLIC_URL")
    if public_url and not public_url.startswith(("http://", "https://")):
        raise ConfigError("PARLOR_PUBLIC_URL must start with http:// or https://")

    node_url = pick("node_url", "PARLOR_NODE_URL")
    if node_url and not node_url.startswith(("http://", "https://")):
        raise ConfigError("PARLOR_NODE_URL must start with http:// or https://")

    rules = Rules()
    max_directive = pick("max_directive", "PARLOR_MAX_DIRECTIVE_SECONDS")
    confirm_window = pick("confirm_window", "PARLOR_CONFIRM_WINDOW_SECONDS")
    if max_directive is not None:
        rules = Rules(
            **{
                **rules.__dict__,
                "max_directive_seconds": _seconds(
                    str(max_directive), "PARLOR_MAX_DIRECTIVE_SECONDS"
                ),
            }
        )
    if confirm_window is not None:
        rules = Rules(
            **{
                **rules.__dict__,
                "confirm_window_seconds": _seconds(
                    str(confirm_window), "PARLOR_CONFIRM_WINDOW_SECONDS"
                ),
            }
        )
    buffer = pick("visit_buffer", "PARLOR_VISIT_BUFFER_SECONDS")
    if buffer is not None:
        # 0 is allowed: back-to-back visits at a kiosk.
        seconds = _seconds(str(buffer), "PARLOR_VISIT_BUFFER_SECONDS", low=0, high=4 * 3600)
        rules = Rules(**{**rules.__dict__, "visit_buffer_seconds": seconds})
    max_visit = pick("max_visit", "PARLOR_MAX_VISIT_SECONDS")
    if max_visit is not None:
        rules = Rules(
            **{
                **rules.__dict__,
                "max_visit_seconds": _seconds(
                    str(max_visit), "PARLOR_MAX_VISIT_SECONDS", low=60, high=86400
                ),
            }
        )

    key_path = pick("jwt_public_key", "PARLOR_JWT_PUBLIC_KEY")
    jwt_public_key = None
    if key_path:
        try:
            jwt_public_key = Path(key_path).read_text()
        except OSError as exc:
            raise ConfigError(
                f"PARLOR_JWT_PUBLIC_KEY: cannot read {key_path}: {exc.strerror}"
            ) from None

    extra: dict[str, Any] = {}
    node_id = pick("node_id", "PARLOR_NODE_ID")
    if node_id:
        extra["node_id"] = node_id
    for name, var in (("join_rate_per_ip", "PARLOR_JOIN_RATE_PER_IP"),
                      ("join_rate_per_identity", "PARLOR_JOIN_RATE_PER_IDENTITY"),
                      ("api_rate_per_identity", "PARLOR_API_RATE_PER_IDENTITY")):  # fmt: skip
        text = pick(name, var)
        if text:
            try:
                extra[name] = Rate.parse(text)
            except ValueError as exc:
                raise ConfigError(
                    f"{var} must look like BURST:PER_SECOND, e.g. 120:2 ({exc})"
                ) from None
    origins = pick("allowed_origins", "PARLOR_ALLOWED_ORIGINS")
    if origins:
        extra["allowed_origins"] = tuple(
            o.strip().rstrip("/") for o in origins.split(",") if o.strip()
        )
    for name, var, low, high in (("max_sessions_per_subject", "PARLOR_MAX_SESSIONS_PER_SUBJECT", 1, 1000),
                                 ("max_calls", "PARLOR_MAX_CALLS", 0, 100_000)):  # fmt: skip
        text = pick(name, var)
        if text is not None:
            extra[name] = _int(str(text), var, low, high)
    lag = pick("overload_lag", "PARLOR_OVERLOAD_LAG_SECONDS")
    if lag is not None:
        extra["overload_lag_seconds"] = _seconds(str(lag), "PARLOR_OVERLOAD_LAG_SECONDS")
    tick = pick("tick", "PARLOR_TICK_SECONDS")
    if tick is not None:
        extra["tick_seconds"] = _seconds(str(tick), "PARLOR_TICK_SECONDS")
    edge: dict[str, Any] = {}
    for name, var in (("header_timeout", "PARLOR_HEADER_TIMEOUT_SECONDS"),
                      ("body_timeout", "PARLOR_BODY_TIMEOUT_SECONDS")):  # fmt: skip
        text = pick(name, var)
        if text is not None:
            edge[name] = _seconds(str(text), var)
    heartbeat = pick("kiosk_heartbeat", "PARLOR_KIOSK_HEARTBEAT_SECONDS")
    if heartbeat is not None:
        # At most 12 s: a kiosk gone silent must show offline within 30 s (2.5 beats).
        extra["kiosk_heartbeat_seconds"] = _seconds(
            str(heartbeat), "PARLOR_KIOSK_HEARTBEAT_SECONDS", low=1, high=12
        )
    grace = pick("join_link_grace", "PARLOR_JOIN_LINK_GRACE_SECONDS")
    if grace is not None:
        extra["join_link_grace_seconds"] = _seconds(
            str(grace), "PARLOR_JOIN_LINK_GRACE_SECONDS", low=60, high=90 * 86400
        )
    guardian_grace = pick("guardian_grace", "PARLOR_GUARDIAN_GRACE_SECONDS")
    if guardian_grace is not None:
        extra["guardian_grace_seconds"] = _seconds(
            str(guardian_grace), "PARLOR_GUARDIAN_GRACE_SECONDS", low=1, high=3600
        )
    per_ip = pick("max_connections_per_ip", "PARLOR_MAX_CONNECTIONS_PER_IP")
    if per_ip is not None:
        edge["max_per_ip"] = _int(str(per_ip), "PARLOR_MAX_CONNECTIONS_PER_IP", 1, 1_000_000)
    if edge:
        extra["edge"] = EdgeLimits(**edge)
    wait = pick("await_confirmation", "PARLOR_AWAIT_CONFIRMATION_SECONDS")
    if wait is not None:  # how long a broad request waits for a second supervisor
        seconds = _seconds(str(wait), "PARLOR_AWAIT_CONFIRMATION_SECONDS")
        rules = Rules(**{**rules.__dict__, "await_confirmation_seconds": seconds})
    recordings = pick("recordings", "PARLOR_RECORDINGS")
    if recordings is not None:
        if not str(recordings).strip():
            raise ConfigError("PARLOR_RECORDINGS must name a directory")
        extra["recordings"] = str(recordings)
    if flags.get("accept_store_state"):
        extra["accept_store_state"] = True
    return Config(
        secret=secret, db=db, host=host, port=port, ice_servers=ice_servers,
        ice_addresses=ice_addresses, public_url=public_url, node_url=node_url or None, codec=codec, rules=rules,
        jwt_public_key=jwt_public_key, **extra,
    )  # fmt: skip
