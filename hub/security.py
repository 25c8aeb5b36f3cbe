"""Tokens and password hashes: random secrets, sha256 lookups, constant-time checks, Mosquitto $7$ lines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (pbkdf2-sha512)


def new_token(prefix: str) -> str:
    """A random bearer token, e.g. `efd_...` for devices, `efe_...` for enrollment."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_password() -> str:
    """A random broker password."""
    return secrets.token_urlsafe(24)


def sha256_hex(token: str) -> str:
    """How tokens are stored: only their sha256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def mosquitto_hash(password: str, *, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """`$7$<iter>$<salt>$<hash>` as mosquitto_passwd writes it (12-byte salt, pbkdf2-sha512, 64 bytes)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"
