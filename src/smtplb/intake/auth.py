"""Password hashes for ``[smtp] users = [{name, password_hash}]``.

The format is ``scrypt$n$r$p$salt_b64$hash_b64`` (standard base64), made with
the stdlib's ``hashlib.scrypt``; generate one with ``hash_password()``.
Checking a password costs tens of milliseconds of CPU on purpose, so callers
on the event loop run ``verify_password`` (or the authenticator) in a worker
thread; the authenticator remembers recent successes so that a client that
authenticates on every connection pays that cost once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["hash_password", "make_authenticator", "parse_hash", "verify_password"]

N: int = 2**14
R: int = 8
P: int = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_N = 2**20  # refuse hashes that would take seconds and gigabytes to check
_MAX_RP = 64
_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:  # never print the digest
        return f"ScryptHash(n={self.n}, r={self.r}, p={self.p})"


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * r * (n + p + 2) + 1024 * 1024,
        dklen=dklen,
    )


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """A new ``scrypt$...`` hash of ``password`` with a random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, n, r, p, salt, _HASH_BYTES)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def parse_hash(stored: str) -> ScryptHash:
    """Parse a stored hash; ``ValueError`` says what is wrong with it."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("password_hash must look like scrypt$n$r$p$salt_b64$hash_b64")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"password_hash has a malformed field: {exc}") from None
    if n < 2 or n > _MAX_N or n & (n - 1):
        raise ValueError(f"password_hash: n must be a power of two from 2 to {_MAX_N}")
    if not (1 <= r <= _MAX_RP and 1 <= p <= _MAX_RP):
        raise ValueError(f"password_hash: r and p must be from 1 to {_MAX_RP}")
    if not salt or len(digest) < 16:
        raise ValueError("password_hash: salt is empty or hash is shorter than 16 bytes")
    return ScryptHash(n, r, p, salt, digest)


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; False also for a malformed hash."""
    try:
        parsed = parse_hash(stored)
    except ValueError:
        return False
    return _check(password, parsed)


def _check(password: str, parsed: ScryptHash) -> bool:
    digest = _scrypt(password, parsed.n, parsed.r, parsed.p, parsed.salt, len(parsed.digest))
    return hmac.compare_digest(digest, parsed.digest)


def make_authenticator(users: Mapping[str, str]) -> Callable[[str, str], bool]:
    """``(username, password) -> ok`` over ``{name: password_hash}``.

    Raises ``ValueError`` naming the user whose hash is malformed. An unknown
    user costs as much as a wrong password, so timing does not reveal names.
    Safe to call from several threads.
    """
    parsed: dict[str, ScryptHash] = {}
    for name, stored in users.items():
        try:
            parsed[name] = parse_hash(stored)
        except ValueError as exc:
            raise ValueError(f"[smtp] users: user {name!r}: {exc}") from None
    decoy = parse_hash(hash_password(secrets.token_urlsafe(16)))
    # Successful checks, keyed by a keyed hash of (user, password): repeated
    # logins skip scrypt, and the cache holds no password.
    cache_key = secrets.token_bytes(32)
    cache: OrderedDict[bytes, None] = OrderedDict()
    lock = threading.Lock()

    def authenticate(username: str, password: str) -> bool:
        token = hmac.digest(cache_key, f"{username}\0{password}".encode(), "sha256")
        with lock:
            if token in cache:
                cache.move_to_end(token)
                return True
        entry = parsed.get(username)
        ok = _check(password, entry if entry is not None else decoy) and entry is not None
        if ok:
            with lock:
                cache[token] = None
                if len(cache) > _CACHE_SIZE:
                    cache.popitem(last=False)
        return ok

    return authenticate
