"""Configuration (SPEC §7): environment, flags that beat it, and bad values that stop start-up."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from signaling.config import ConfigError, ensure_demo_secret, load_config, secret_path

SECRET = "x" * 32


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"PARLOR_DB": str(tmp_path / "parlor.db"), "PARLOR_SECRET": SECRET, **values}


def refused(environment: dict[str, str], *words: str, **flags: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(environment, **flags)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    return message


def test_defaults(tmp_path):
    config = load_config(env(tmp_path))
    assert config.secret == SECRET.encode()
    assert (config.host, config.port, config.codec) == ("127.0.0.1", 8080, "VP8")
    assert config.ice_servers == [] and config.ice_addresses is None
    assert config.base_url == "http://127.0.0.1:8080"
    assert config.rules.max_directive_seconds == 30 * 86400
    assert config.rules.confirm_window_seconds == 15 * 60


def test_default_db_path():
    assert load_config({"PARLOR_SECRET": SECRET}).db == "./var/parlor.db"


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_secret_shorter_than_32_bytes_is_refused(tmp_path, secret):
    refused(env(tmp_path, PARLOR_SECRET=secret), "PARLOR_SECRET", "32")


def test_secret_length_is_counted_in_bytes(tmp_path):
    assert len(load_config(env(tmp_path, PARLOR_SECRET="é" * 16)).secret) == 32


def test_no_secret_and_no_stored_demo_secret_is_refused(tmp_path):
    message = refused({"PARLOR_DB": str(tmp_path / "parlor.db")}, "PARLOR_SECRET")
    assert "parlor demo" in message
    assert not secret_path(str(tmp_path / "parlor.db")).exists()


def test_stored_demo_secret_is_accepted(tmp_path):
    db = str(tmp_path / "var" / "parlor.db")
    secret = ensure_demo_secret(db)
    path = tmp_path / "var" / "secret"
    assert secret_path(db) == path and path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32
    assert ensure_demo_secret(db) == secret  # generated once, then reused
    assert load_config({"PARLOR_DB": db}).secret == secret
    # An explicit secret still wins over the stored one.
    assert load_config({"PARLOR_DB": db, "PARLOR_SECRET": SECRET}).secret == SECRET.encode()


def test_a_stored_secret_that_is_too_short_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"tiny\n")
    refused({"PARLOR_DB": str(tmp_path / "parlor.db")}, "32")


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("not json", "not JSON"),
        ('{"urls": "stun:x"}', "list"),
        ('["stun:x"]', "urls"),
        ('[{"username": "u"}]', "urls"),
        ('[{"urls": 5}]', "urls"),
        ('[{"urls": ["stun:a", 5]}]', "urls"),
        ('[{"urls": "http://x"}]', "stun:"),
    ],
)
def test_bad_ice_servers_are_refused(tmp_path, value, word):
    refused(env(tmp_path, PARLOR_ICE_SERVERS=value), "PARLOR_ICE_SERVERS", word)


def test_ice_servers_are_parsed(tmp_path):
    servers = [{"urls": "stun:stun.example.org:3478"},
               {"urls": ["turn:t.example.org", "turns:t.example.org"], "username": "u", "credential": "p"}]  # fmt: skip
    import json

    assert load_config(env(tmp_path, PARLOR_ICE_SERVERS=json.dumps(servers))).ice_servers == servers
    assert load_config(env(tmp_path, PARLOR_ICE_SERVERS="[]")).ice_servers == []
    assert load_config(env(tmp_path, PARLOR_ICE_SERVERS="")).ice_servers == []


def test_ice_addresses(tmp_path):
    config = load_config(env(tmp_path, PARLOR_ICE_ADDRESSES="127.0.0.1, ::1"))
    assert config.ice_addresses == ["127.0.0.1", "::1"]
    refused(env(tmp_path, PARLOR_ICE_ADDRESSES="127.0.0.1,localhost"), "localhost")


@pytest.mark.parametrize("port", ["abc", "", "8080.5", "-1", "65536", "99999"])
def test_bad_port_is_refused(tmp_path, port):
    refused(env(tmp_path, PARLOR_PORT=port), "port")


def test_bad_port_flag_is_refused(tmp_path):
    refused(env(tmp_path), "port", port=70000)


@pytest.mark.parametrize("codec", ["AV1", "vp9", "", "H.264"])
def test_bad_codec_is_refused(tmp_path, codec):
    if codec == "":
        assert load_config(env(tmp_path, PARLOR_CODEC="")).codec == "VP8"  # empty means default
        return
    refused(env(tmp_path, PARLOR_CODEC=codec), "PARLOR_CODEC")


def test_codec_is_case_insensitive(tmp_path):
    assert load_config(env(tmp_path, PARLOR_CODEC="h264")).codec == "H264"


def test_flags_beat_the_environment(tmp_path):
    environment = env(tmp_path, PARLOR_HOST="127.0.0.2", PARLOR_PORT="9000", PARLOR_CODEC="VP8",
                      PARLOR_ICE_ADDRESSES="127.0.0.2", PARLOR_PUBLIC_URL="https://env.example",
                      PARLOR_NODE_ID="env-node")  # fmt: skip
    from_env = load_config(environment)
    assert (from_env.host, from_env.port, from_env.codec, from_env.node_id) == (
        "127.0.0.2",
        9000,
        "VP8",
        "env-node",
    )
    config = load_config(
        environment, host="127.0.0.1", port=9100, codec="H264", db=str(tmp_path / "flag.db"),
        ice_addresses="127.0.0.1", public_url="https://flag.example/", node_id="flag-node",
    )  # fmt: skip
    assert (config.host, config.port, config.codec, config.node_id) == (
        "127.0.0.1",
        9100,
        "H264",
        "flag-node",
    )
    assert config.db == str(tmp_path / "flag.db")
    assert config.ice_addresses == ["127.0.0.1"]
    assert config.base_url == "https://flag.example"


def test_a_flag_set_to_none_leaves_the_environment_in_charge(tmp_path):
    config = load_config(env(tmp_path, PARLOR_PORT="9000"), port=None, host=None)
    assert config.port == 9000


def test_bad_flag_value_is_refused_even_when_the_environment_is_good(tmp_path):
    refused(env(tmp_path, PARLOR_CODEC="VP8"), "PARLOR_CODEC", codec="AV1")


def test_public_url_must_be_http(tmp_path):
    refused(env(tmp_path, PARLOR_PUBLIC_URL="visits.example.org"), "PARLOR_PUBLIC_URL")


@pytest.mark.parametrize(
    "name",
    [
        "PARLOR_MAX_DIRECTIVE_SECONDS",
        "PARLOR_CONFIRM_WINDOW_SECONDS",
        "PARLOR_AWAIT_CONFIRMATION_SECONDS",
        "PARLOR_TICK_SECONDS",
        "PARLOR_OVERLOAD_LAG_SECONDS",
    ],
)
@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_durations_are_refused(tmp_path, name, value):
    refused(env(tmp_path, **{name: value}), name)


def test_rule_limits_are_configurable(tmp_path):
    config = load_config(
        env(tmp_path, PARLOR_MAX_DIRECTIVE_SECONDS="3600", PARLOR_CONFIRM_WINDOW_SECONDS="60")
    )
    assert (config.rules.max_directive_seconds, config.rules.confirm_window_seconds) == (3600, 60)
    assert config.rules.request_wait_seconds == 60  # a request waits one window by default
    config = load_config(env(tmp_path, PARLOR_AWAIT_CONFIRMATION_SECONDS="1800"))
    assert (config.rules.confirm_window_seconds, config.rules.request_wait_seconds) == (900, 1800)


def test_unreadable_public_key_is_refused(tmp_path):
    refused(
        env(tmp_path, PARLOR_JWT_PUBLIC_KEY=str(tmp_path / "missing.pem")), "PARLOR_JWT_PUBLIC_KEY"
    )


def test_load_limits_are_configurable(tmp_path):
    config = load_config(env(tmp_path))
    assert (config.max_sessions_per_subject, config.max_calls) == (10, 0)
    assert config.overload_lag_seconds == 0.1
    config = load_config(
        env(
            tmp_path,
            PARLOR_MAX_SESSIONS_PER_SUBJECT="3",
            PARLOR_MAX_CALLS="40",
            PARLOR_OVERLOAD_LAG_SECONDS="0.3",
        )  # fmt: skip
    )
    assert (config.max_sessions_per_subject, config.max_calls) == (3, 40)
    assert config.overload_lag_seconds == 0.3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PARLOR_MAX_SESSIONS_PER_SUBJECT", "0"),
        ("PARLOR_MAX_SESSIONS_PER_SUBJECT", "many"),
        ("PARLOR_MAX_CALLS", "-1"),
        ("PARLOR_MAX_CALLS", "1e3"),
    ],  # fmt: skip
)
def test_bad_load_limits_are_refused(tmp_path, name, value):
    refused(env(tmp_path, **{name: value}), name)
