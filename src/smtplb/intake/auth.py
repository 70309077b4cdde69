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
from typing import Any

from smtplb.clock import Clock

__all__ = [
    "AuthThrottle",
    "AuthVerdict",
    "hash_password",
    "make_authenticator",
    "parse_hash",
    "verify_password",
]

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


# -- brute-force throttling ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """What to do with an AUTH attempt before checking its password."""

    delay: float = 0.0  # seconds to wait before answering (whatever the outcome)
    locked_for: float = 0.0  # > 0: refuse without checking; the lockout has this long left


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0  # clock time of the last failure
    locked_until: float = 0.0
    pending: int = 0  # attempts being checked right now


class AuthThrottle:
    """Failed-AUTH bookkeeping per client IP and per user, on an injected clock.

    Every failure from an IP makes its next attempt wait longer (``delay``,
    doubling, capped at ``max_delay``); ``max_failures`` failures lock the IP
    out for ``lockout``: its attempts are refused without checking the
    password. Failures for a user (from any IP) beyond ``max_failures`` slow
    down attempts on that user too (a distributed guess), but never lock the
    account: an attacker elsewhere cannot lock out the right password. A
    (user, IP) pair that logged in recently is not slowed down (a mistyped
    password does not haunt the next login). The delay is taken before the
    answer, success or not, so a client cannot learn the outcome early by
    giving up. A record is forgotten ``lockout``
    after its last failure; at most ``max_entries`` of each kind are kept.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = 10,
        lockout: float = 900.0,
        delay: float = 1.0,
        max_delay: float = 15.0,
        max_entries: int = 100_000,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.lockout = lockout
        self.delay = delay
        self.max_delay = max_delay
        self._max_entries = max_entries
        self._ips: OrderedDict[str, _Failures] = OrderedDict()
        self._users: OrderedDict[str, _Failures] = OrderedDict()
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()  # (user, ip) -> when

    def begin(self, ip: str, user: str) -> AuthVerdict:
        """An attempt starts. Unless it is refused (``locked_for``), the caller
        must call ``end()`` for it once it has an outcome."""
        now = self._clock.monotonic()
        ip_rec = self._get(self._ips, ip, now)
        if ip_rec is not None and ip_rec.locked_until > now:
            return AuthVerdict(locked_for=ip_rec.locked_until - now)
        if ip_rec is not None and ip_rec.count + ip_rec.pending >= self.max_failures:
            # Attempts in flight could take it over the limit: none in parallel.
            return AuthVerdict(locked_for=max(self.max_delay, 1.0))
        delay = 0.0
        if not self._is_trusted(user, ip, now):
            user_rec = self._get(self._users, user, now)
            # A user's failures count once they are more than one IP's worth:
            # one attacker, locked out, does not slow the user down elsewhere.
            delay = max(self._delay_for(ip_rec), self._delay_for(user_rec, self.max_failures))
        if ip_rec is None:
            ip_rec = self._put(self._ips, ip)
        ip_rec.pending += 1
        return AuthVerdict(delay=delay)

    def end(self, ip: str, user: str, ok: bool | None) -> bool:
        """The outcome of an attempt ``begin()`` let through (None: abandoned
        before the check). True if this failure locked the IP out."""
        now = self._clock.monotonic()
        ip_rec = self._ips.get(ip)
        if ip_rec is not None and ip_rec.pending:
            ip_rec.pending -= 1
        if ok is None:
            return False
        if ok:
            self._trusted[(user, ip)] = now
            self._trusted.move_to_end((user, ip))
            self._trim(self._trusted)
            # The IP's failures stay: a login to an account of one's own must
            # not wipe the count of guesses at another's.
            return False
        if ip_rec is None:
            ip_rec = self._put(self._ips, ip)
        user_rec = self._get(self._users, user, now) or self._put(self._users, user)
        for rec, table, key in ((ip_rec, self._ips, ip), (user_rec, self._users, user)):
            rec.count += 1
            rec.last = now
            table.move_to_end(key)
        if ip_rec.count >= self.max_failures and ip_rec.locked_until <= now:
            ip_rec.locked_until = now + self.lockout
            return True
        return False

    def failures(self, ip: str, user: str) -> tuple[int, int]:
        """Recent failures (from ``ip``, for ``user``), for the log."""
        now = self._clock.monotonic()
        ip_rec = self._get(self._ips, ip, now)
        user_rec = self._get(self._users, user, now)
        return (ip_rec.count if ip_rec else 0, user_rec.count if user_rec else 0)

    def _delay_for(self, rec: _Failures | None, free: int = 0) -> float:
        """No delay for ``free`` failures, then ``delay`` doubling up to ``max_delay``."""
        count = 0 if rec is None else rec.count - free
        if count <= 0:
            return 0.0
        return min(self.max_delay, self.delay * 2.0 ** min(count - 1, 30))

    def _is_trusted(self, user: str, ip: str, now: float) -> bool:
        when = self._trusted.get((user, ip))
        return when is not None and now - when < self.lockout

    def _get(self, table: OrderedDict[str, _Failures], key: str, now: float) -> _Failures | None:
        rec = table.get(key)
        if rec is not None and not rec.pending and self._expired(rec, now):
            del table[key]
            return None
        return rec

    def _expired(self, rec: _Failures, now: float) -> bool:
        return rec.locked_until <= now and now - rec.last >= self.lockout

    def _put(self, table: OrderedDict[str, _Failures], key: str) -> _Failures:
        rec = table[key] = _Failures(last=self._clock.monotonic())
        self._trim(table)
        return rec

    def _trim(self, table: OrderedDict[Any, Any]) -> None:
        while len(table) > self._max_entries:
            table.popitem(last=False)

    def __repr__(self) -> str:
        now = self._clock.monotonic()
        locked = sum(1 for r in self._ips.values() if r.locked_until > now)
        return (
            f"AuthThrottle({len(self._ips)} IPs with failures, {locked} locked out, "
            f"{len(self._users)} users with failures)"
        )
