"""Secrets, signatures, delivery ids and the retry schedule: pure functions, checked against
independent computations and literals."""

from __future__ import annotations

import hashlib
import hmac
import time

from runs.ids import is_id
from runs.webhooks.sender import Retry, stamp
from runs.webhooks.signing import delivery_id_for, endpoint_secret, signature_header
from tests.webhooks.receiver import readme_verifier

verify = readme_verifier()


def test_the_secret_is_an_hmac_of_the_endpoint_id_under_the_service_key() -> None:
    key = b"service key"
    expected = hmac.new(
        key, b"runlog webhook endpoint secret v1\x00" + b"ep-1", hashlib.sha256
    ).hexdigest()
    assert endpoint_secret(key, "ep-1") == "whsec_" + expected
    assert endpoint_secret(key, "ep-1") == endpoint_secret(key, "ep-1")
    assert endpoint_secret(key, "ep-2") != endpoint_secret(key, "ep-1")
    assert endpoint_secret(b"other key", "ep-1") != endpoint_secret(key, "ep-1")


def test_the_signature_header_is_what_the_readme_verifier_accepts() -> None:
    secret, body, now = "whsec_abc", b'{"id":"x"}', int(time.time())
    header = signature_header(secret, now, body)
    digest = hmac.new(b"whsec_abc", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={now},v1={digest}"
    assert verify(secret, body, header)
    assert not verify(secret, body + b"x", header)
    assert not verify("whsec_abd", body, header)
    assert not verify(secret, body, f"t={now + 1},v1={digest}")
    # Too old (a replay), malformed, or missing parts.
    assert not verify(secret, body, signature_header(secret, now - 3600, body))
    assert not verify(secret, body, "garbage")
    assert not verify(secret, body, f"v1={digest}")
    assert not verify(secret, body, "")


def test_delivery_ids_are_stable_time_ordered_uuids() -> None:
    first = delivery_id_for("ep", 7, "2024-01-01T00:00:00.123Z")
    assert first == delivery_id_for("ep", 7, "2024-01-01T00:00:00.123Z")
    assert is_id(first)
    assert first[14] == "7"  # UUIDv7
    assert first.replace("-", "")[:12] == f"{1704067200123:012x}"
    assert delivery_id_for("ep", 8, "2024-01-01T00:00:00.123Z") != first
    assert delivery_id_for("ep2", 7, "2024-01-01T00:00:00.123Z") != first
    assert delivery_id_for("ep", 9, "2024-01-01T00:00:00.124Z") > first


def test_backoff_doubles_up_to_the_cap() -> None:
    retry = Retry(base_s=10, max_delay_s=3600, give_up_after_s=86400)
    assert [retry.delay(n) for n in range(1, 11)] == [
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        1280,
        2560,
        3600,
    ]
    assert retry.delay(500) == 3600


def test_stamps_use_the_logs_format() -> None:
    assert stamp(1704067200.123) == "2024-01-01T00:00:00.123Z"
    assert stamp(0) == "1970-01-01T00:00:00.000Z"
