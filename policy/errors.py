"""Typed domain errors. Each carries a stable machine code and a kind the API maps to a status."""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every refusal the domain makes. `kind` is one of the kinds below."""

    kind = "malformed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Malformed(PolicyError):
    """The request is not of the right shape (HTTP 400)."""

    kind = "malformed"


class Forbidden(PolicyError):
    """The caller's role or identity may not do this (HTTP 403)."""

    kind = "forbidden"


class NotFound(PolicyError):
    """Unknown id (HTTP 404)."""

    kind = "not-found"


class Conflict(PolicyError):
    """The request clashes with current state (HTTP 409)."""

    kind = "conflict"


class RuleBroken(PolicyError):
    """Well-formed but breaks a policy rule, e.g. a directive with no expiry (HTTP 422)."""

    kind = "rule"


class StoreUnavailable(PolicyError):
    """The store cannot be reached: the node fails closed (HTTP 503)."""

    kind = "unavailable"
