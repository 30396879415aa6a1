"""Credentials: API keys (stored as sha256), scrypt passwords, signed expiring access tokens.

Pure helpers: they never touch the log; the service records only hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import msgspec

__all__ = [
    "DUMMY_PASSWORD_HASH",
    "AccessClaims",
    "hash_password",
    "key_sha256",
    "new_api_key",
    "sign_access_token",
    "verify_access_token",
    "verify_password",
]

API_KEY_PREFIX = "rl_"
ACCESS_TOKEN_PREFIX = "rlt_"  # noqa: S105 - a prefix, not a secret
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_api_key() -> str:
    """A fresh API key: prefix + 256 random bits."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def key_sha256(key: str) -> str:
    """What the log records of a key. Keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): slow by design, run it off the event loop."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return "$".join(
        (
            "scrypt",
            str(_SCRYPT_N),
            str(_SCRYPT_R),
            str(_SCRYPT_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        )
    )


#: Compared against when the login is unknown, so both paths cost one scrypt. Only its
#: parameters matter (no password matches a digest of zeros), so it is written out rather than
#: computed at import, which cost one scrypt on every start.
DUMMY_PASSWORD_HASH = "$".join(
    ("scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), "A" * 22 + "==", "A" * 43 + "=")
)


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class AccessClaims(msgspec.Struct, frozen=True):
    sub: str  # user id
    org: str
    exp: int
    iat: int
    jti: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: only the one canonical unpadded base64url spelling of some bytes is accepted
    (no padding, no other alphabet, no stray bits in the last character)."""
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(decoded) != text:
        raise ValueError("not canonical base64url")
    return decoded


def sign_access_token(
    secret: bytes, user_id: str, org_id: str, ttl_seconds: int, now: float | None = None
) -> str:
    """``rlt_<claims>.<hmac-sha256>``: self-contained, checked without a lookup but for the user."""
    issued = int(now if now is not None else time.time())
    claims = AccessClaims(
        sub=user_id, org=org_id, exp=issued + ttl_seconds, iat=issued, jti=secrets.token_hex(8)
    )
    body = _b64(msgspec.json.encode(claims))
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{ACCESS_TOKEN_PREFIX}{body}.{_b64(mac)}"


_claims_decoder = msgspec.json.Decoder(AccessClaims)


def verify_access_token(secret: bytes, token: str, now: float | None = None) -> AccessClaims | None:
    """The claims of a valid, unexpired token; ``None`` for anything else."""
    if not token.startswith(ACCESS_TOKEN_PREFIX):
        return None
    body, _, mac = token[len(ACCESS_TOKEN_PREFIX) :].partition(".")
    expected = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    try:
        given = _unb64(mac)
    except ValueError:
        return None
    if not hmac.compare_digest(expected, given):
        return None
    try:
        claims = _claims_decoder.decode(_unb64(body))
    except (ValueError, msgspec.DecodeError):
        return None
    if claims.exp <= (now if now is not None else time.time()):
        return None
    return claims
