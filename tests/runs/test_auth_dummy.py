"""The hash an unknown login is checked against costs one scrypt like a real one, but is
written out, not computed when the module is imported (start-up time)."""

from __future__ import annotations

import base64

from runs.auth import DUMMY_PASSWORD_HASH, hash_password, verify_password


def test_the_dummy_hash_has_a_real_hashs_parameters_and_matches_no_password() -> None:
    real = hash_password("s3cret-pass").split("$")
    dummy = DUMMY_PASSWORD_HASH.split("$")
    assert dummy[:4] == real[:4] == ["scrypt", "16384", "8", "1"]
    assert len(base64.b64decode(dummy[4])) == len(base64.b64decode(real[4])) == 16
    assert len(base64.b64decode(dummy[5])) == len(base64.b64decode(real[5])) == 32
    assert not verify_password("not a password", DUMMY_PASSWORD_HASH)
    assert not verify_password("", DUMMY_PASSWORD_HASH)
