"""JWT tokens (SPEC §3): what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signaling.tokens import TokenError, Tokens

SECRET = b"unit-test-secret-that-is-long-enough-for-hs256-and-hs512-0123456789"
NOW = time.time()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET)


def claims(**overrides: object) -> dict:
    now = int(time.time())
    base = {
        "sub": "operator:alice",
        "role": "operator",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refused(tokens: Tokens, token: object, code: str = "bad-token") -> None:
    with pytest.raises(TokenError) as caught:
        tokens.verify(token)
    assert caught.value.code == code


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("sub", "role", "visit"),
    [
        ("operator:alice", "operator", None),
        ("operator:bob", "supervisor", None),
        ("auditor:eve", "auditor", None),
        ("device:K1", "kiosk", None),
        ("contact:C1", "family", "V1"),
    ],
)
def test_issue_then_verify(tokens, sub, role, visit):
    token = tokens.issue(sub, role, 600, visit=visit)
    verified = tokens.verify(token)
    assert (verified.actor.sub, verified.actor.role, verified.actor.visit) == (sub, role, visit)
    assert verified.expires_at - verified.issued_at == 600
    raw = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert set(raw) >= {"sub", "role", "iat", "nbf", "exp", "jti"}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_every_token_gets_its_own_jti(tokens):
    a, b = (tokens.verify(tokens.issue("operator:alice", "operator", 60)) for _ in range(2))
    assert a.jti != b.jti


def test_expired_token_is_refused(tokens):
    past = Tokens(SECRET, clock=lambda: time.time() - 7200)
    refused(tokens, past.issue("operator:alice", "operator", 3600), "expired-token")


def test_leeway_tolerates_small_clock_skew(tokens):
    skewed = Tokens(SECRET, clock=lambda: time.time() - 70)
    assert (
        tokens.verify(skewed.issue("operator:alice", "operator", 60)).actor.sub == "operator:alice"
    )


def test_not_yet_valid_token_is_refused(tokens):
    token = tokens.issue("operator:alice", "operator", 7200, not_before=time.time() + 3600)
    refused(tokens, token, "token-not-yet-valid")


def test_forged_signature_is_refused(tokens):
    other = Tokens(b"another-secret-that-is-long-enough-0123456789")
    refused(tokens, other.issue("operator:alice", "operator", 600))


def test_edited_payload_is_refused(tokens):
    header, _, signature = tokens.issue("operator:alice", "operator", 600).split(".")
    promoted = b64(claims(role="supervisor"))
    refused(tokens, f"{header}.{promoted}.{signature}")


def test_alg_none_is_refused(tokens):
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    refused(tokens, unsigned)
    refused(tokens, jwt.encode(claims(), None, algorithm="none"))


def test_hs512_is_refused(tokens):
    refused(tokens, jwt.encode(claims(), SECRET, algorithm="HS512"))


def test_public_key_algorithms_without_a_configured_key_are_refused(tokens):
    private = Ed25519PrivateKey.generate()
    refused(tokens, jwt.encode(claims(), private, algorithm="EdDSA"))


def test_external_eddsa_issuer_is_accepted_and_not_confused_with_hs256():
    private = Ed25519PrivateKey.generate()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    tokens = Tokens(SECRET, public_key=public_pem)
    assert (
        tokens.verify(jwt.encode(claims(), private, algorithm="EdDSA")).actor.sub
        == "operator:alice"
    )
    # Algorithm confusion: an HS256 token keyed with the (public) PEM must not pass.
    import hashlib
    import hmac

    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims(role='supervisor'))}"
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    refused(tokens, forged)
    other = Ed25519PrivateKey.generate()
    refused(tokens, jwt.encode(claims(), other, algorithm="EdDSA"))


@pytest.mark.parametrize(
    ("sub", "role"),
    [
        ("contact:C1", "operator"),
        ("operator:alice", "family"),
        ("device:K1", "family"),
        ("contact:C1", "kiosk"),
        ("operator:alice", "auditor"),
        ("auditor:eve", "supervisor"),
        ("alice", "operator"),
        ("operator:alice", "admin"),
        ("operator:alice", "system"),
    ],
)
def test_role_and_subject_must_agree(tokens, sub, role):
    refused(tokens, jwt.encode(claims(sub=sub, role=role, visit="V1"), SECRET, algorithm="HS256"))


def test_family_token_without_a_visit_is_refused(tokens):
    refused(tokens, jwt.encode(claims(sub="contact:C1", role="family"), SECRET, algorithm="HS256"))
    refused(
        tokens,
        jwt.encode(claims(sub="contact:C1", role="family", visit=7), SECRET, algorithm="HS256"),
    )
    with pytest.raises(ValueError):
        tokens.issue("contact:C1", "family", 600)


@pytest.mark.parametrize("missing", ["sub", "role", "iat", "nbf", "exp", "jti"])
def test_every_required_claim_must_be_present(tokens, missing):
    token = jwt.encode(
        {k: v for k, v in claims().items() if k != missing}, SECRET, algorithm="HS256"
    )
    refused(tokens, token)


@pytest.mark.parametrize("token", [None, "", 42, "not-a-jwt", "a.b.c", "x" * 5000])
def test_garbage_is_refused(tokens, token):
    refused(tokens, token)


def test_issue_refuses_bad_arguments(tokens):
    for args in (
        ("operator:a", "admin", 60),
        ("alice", "operator", 60),
        ("operator:a", "operator", 0),
    ):
        with pytest.raises(ValueError):
            tokens.issue(*args)
