"""JWT tokens (RFC 7519, SPEC §3): issued with the server's HS256 secret, or verified with an
external issuer's public key (EdDSA or RS256).

A valid token is never enough on its own: it says who is asking, and policy decides.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from policy.actor import ROLES, Actor
from signaling.protocol import Error

MAX_TOKEN_CHARS = 4 * 1024
SUB_KINDS = {
    "family": "contact",
    "kiosk": "device",
    "operator": "operator",
    "supervisor": "operator",
    "auditor": "auditor",
}


class TokenError(Exception):
    """The token is missing, malformed, forged or expired (close 4401 / HTTP 401)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Claims:
    actor: Actor
    jti: str
    issued_at: float
    expires_at: float


class Tokens:
    def __init__(
        self,
        secret: bytes,
        *,
        leeway: float = 30.0,
        public_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._public_key = public_key
        self.leeway = leeway
        self.clock = clock

    def issue(
        self,
        sub: str,
        role: str,
        ttl: float,
        *,
        visit: str | None = None,
        not_before: float | None = None,
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if ":" not in sub:
            raise ValueError("sub must look like kind:id, e.g. contact:C1 or operator:alice")
        if role == "family" and visit is None:
            raise ValueError("family tokens are bound to a visit")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = int(self.clock())
        claims: dict[str, object] = {
            "sub": sub,
            "role": role,
            "iat": now,
            "nbf": int(not_before) if not_before is not None else now,
            "exp": int(now + ttl),
            "jti": secrets.token_hex(8),
        }
        if visit is not None:
            claims["visit"] = visit
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: object) -> Claims:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError(Error.BAD_TOKEN, "a token is required")
        if (
            not token.isascii()
        ):  # a JWT is base64url and dots; PyJWT raises UnicodeEncodeError on the rest
            raise TokenError(Error.BAD_TOKEN, "the token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError(Error.BAD_TOKEN, "the token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm == "HS256":
            key: object = self._secret
        elif algorithm in ("EdDSA", "RS256") and self._public_key is not None:
            key = self._public_key
        else:
            raise TokenError(Error.BAD_TOKEN, f"tokens signed with {algorithm!r} are not accepted")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], leeway=self.leeway,
                options={"require": ["sub", "role", "iat", "nbf", "exp", "jti"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise TokenError(Error.EXPIRED_TOKEN, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError(Error.TOKEN_NOT_YET_VALID, "the token is not valid yet") from None
        except jwt.PyJWTError:
            raise TokenError(Error.BAD_TOKEN, "the token is not valid") from None
        role, sub, visit = claims.get("role"), claims.get("sub"), claims.get("visit")
        if role not in ROLES or not isinstance(sub, str) or sub.split(":", 1)[0] != SUB_KINDS[role]:
            raise TokenError(Error.BAD_TOKEN, "the token's role and subject do not agree")
        if role == "family" and not isinstance(visit, str):
            raise TokenError(Error.BAD_TOKEN, "a family token must name its visit")
        return Claims(
            actor=Actor(sub=sub, role=role, visit=visit if isinstance(visit, str) else None),
            jti=str(claims["jti"]),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
