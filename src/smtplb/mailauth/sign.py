"""DKIM signatures (RFC 6376, RFC 8463): relaxed/relaxed, RSA-SHA256 and Ed25519-SHA256.

:func:`sign_message` is pure CPU work on bytes (the crypto releases the GIL), so
:class:`DkimSigner` runs it in a small thread pool, off the event loop. It signs the
exact bytes that will be sent and returns only the ``DKIM-Signature`` fields to put
on top: nothing else in the message is touched, so a folded List-Unsubscribe stays
as the sender wrote it.

Which key signs: the ``[[dkim]]`` entries of the most specific configured domain that
is the From domain or one of its parents; every *active* selector of that domain signs
(two during a key rotation: a dual signature, either of which verifies).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from smtplb.mailauth.canon import relaxed_body, relaxed_header, split_headers

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# Signed when present (RFC 6376 §5.4.1 and the 2024 bulk-sender guidance); the
# over-signed ones are listed once more than they occur, so that nobody can add
# another instance later (an added From, Subject or unsubscribe link breaks the
# signature instead of being shown to the reader).
SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)
OVER_SIGNED = frozenset({"from", "subject", "list-unsubscribe", "list-unsubscribe-post"})
_SIGNED_ORDER = tuple((name.encode(), name) for name in SIGNED_HEADERS)
_SIGNED = frozenset(name for name, _ in _SIGNED_ORDER)
_OVER_SIGNED = frozenset(name.encode() for name in OVER_SIGNED)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One selector of one domain, loaded from its PEM file."""

    domain: str
    selector: str
    private_key: PrivateKey
    path: str
    active: bool = True

    @property
    def algorithm(self) -> str:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return "ed25519-sha256"
        return "rsa-sha256"

    def __repr__(self) -> str:  # never the key material
        state = "active" if self.active else "inactive"
        return f"SigningKey({self.selector}._domainkey.{self.domain}, {self.algorithm}, {state})"


class KeyRing:
    """The loaded ``[[dkim]]`` keys, by domain; replaced as a whole on reload."""

    def __init__(self, keys: Sequence[SigningKey] = ()) -> None:
        self.keys = tuple(keys)
        self._by_domain: dict[str, list[SigningKey]] = {}
        for key in self.keys:
            self._by_domain.setdefault(key.domain, []).append(key)

    def for_domain(self, from_domain: str) -> list[SigningKey]:
        """The active keys of the most specific configured domain covering ``from_domain``."""
        name = from_domain.lower().rstrip(".")
        while name:
            keys = self._by_domain.get(name)
            if keys is not None:
                return [k for k in keys if k.active]
            _, _, name = name.partition(".")
        return []

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self.keys)} keys for {len(self._by_domain)} domains)"


def address_domain(from_value: str) -> str | None:
    """The domain of the first address in a From value (unfolded), lower-cased."""
    for _, addr in email.utils.getaddresses([from_value]):
        if "@" in addr:
            return addr.rpartition("@")[2].strip().lower() or None
    return None


def from_domain(fields: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The domain of the (first) From address, or None when there is none."""
    for name, raw in fields:
        if name.lower() == b"from":
            value = raw.split(b":", 1)[1].decode("utf-8", "replace")
            return address_domain(value.replace("\r\n", ""))
    return None


def _signed_headers(fields: Sequence[tuple[bytes, bytes]]) -> tuple[list[str], bytes]:
    """The ``h=`` names and the canonicalised fields they cover, in that order: a
    repeated name once per instance, taken from the bottom up (§5.4.2), plus once more
    for an over-signed name (which covers nothing, so an added instance breaks it)."""
    present: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, raw in fields:
        lower = name.lower()
        if lower in _SIGNED:
            present.setdefault(lower, []).append((name, raw))
    names: list[str] = []
    data: list[bytes] = []
    for wanted, text in _SIGNED_ORDER:
        instances = present.get(wanted)
        if instances is not None:
            for name, raw in reversed(instances):
                names.append(text)
                data.append(relaxed_header(name, raw))
        if wanted in _OVER_SIGNED:
            names.append(text)
    return names, b"".join(data)


def _fold_b64(value: str, width: int = 72) -> str:
    return "\r\n\t ".join(value[i : i + width] for i in range(0, len(value), width))


def _fold_names(names: Sequence[str], width: int = 70) -> str:
    """``h=``'s names joined by colons, folded before a name that would pass ``width``."""
    lines = [""]
    for name in names:
        item = name if not lines[-1] else ":" + name
        if lines[-1] and len(lines[-1]) + len(item) > width:
            lines.append(item)
        else:
            lines[-1] += item
    return "\r\n\t ".join(lines)


def signature_field(
    key: SigningKey, names: Sequence[str], signed: bytes, body_hash: str, timestamp: int
) -> bytes:
    """The complete ``DKIM-Signature`` field (with CRLF) for one key, over the
    canonicalised header fields ``signed`` that ``names`` lists."""
    template = (
        f"DKIM-Signature: v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain};\r\n"
        f"\ts={key.selector}; t={timestamp};\r\n"
        f"\th={_fold_names(names)};\r\n"
        f"\tbh={body_hash};\r\n"
        "\tb="
    )
    own = relaxed_header(b"DKIM-Signature", template.encode("ascii"))
    data = signed + own[:-2]  # the signature field itself without its CRLF (§3.7)
    if isinstance(key.private_key, ed25519.Ed25519PrivateKey):
        signature = key.private_key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3
    else:
        signature = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return (template + _fold_b64(base64.b64encode(signature).decode("ascii")) + "\r\n").encode()


def sign_message(message: bytes, keys: Sequence[SigningKey], timestamp: int | None = None) -> bytes:
    """The ``DKIM-Signature`` fields (one per key) to put on top of ``message``.

    ``message`` is the exact content that will be sent: header block, blank line, body,
    all lines ending in CRLF. The canonical forms are made once for all the keys."""
    if not keys:
        return b""
    end = message.find(b"\r\n\r\n")
    block, body = (message[: end + 2], message[end + 4 :]) if end >= 0 else (message, b"")
    names, signed = _signed_headers(split_headers(block))
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
    when = int(time.time()) if timestamp is None else timestamp
    return b"".join(signature_field(k, names, signed, body_hash, when) for k in keys)


class DkimSigner:
    """Signs at intake, before the message is stored, in a thread pool."""

    def __init__(self, keyring: KeyRing, threads: int = 2) -> None:
        self.keyring = keyring
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dkim")

    def keys_for(self, message: bytes) -> list[SigningKey]:
        """The keys that sign ``message`` (none: it goes out unsigned)."""
        if not self.keyring:
            return []
        end = message.find(b"\r\n\r\n")
        domain = from_domain(split_headers(message[: end + 2] if end >= 0 else message))
        return self.keyring.for_domain(domain) if domain else []

    async def sign(self, message: bytes) -> bytes:
        """``message`` with its signatures on top, or unchanged when no key covers it."""
        keys = self.keys_for(message)
        if not keys:
            return message
        loop = asyncio.get_running_loop()
        fields = await loop.run_in_executor(self._pool, sign_message, message, keys)
        return fields + message

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"DkimSigner({self.keyring!r})"
