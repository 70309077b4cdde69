"""DKIM signatures (RFC 6376, RFC 8463): relaxed/relaxed, RSA-SHA256 and Ed25519-SHA256.

:func:`sign_message` is pure CPU work on bytes (the crypto releases the GIL);
:class:`DkimSigner` makes the RSA signature in a thread when a core is free for it
(:func:`offload_signing`). It signs the exact bytes that will be sent and returns
only the ``DKIM-Signature`` fields to put on top: nothing else in the message is
touched, so a folded List-Unsubscribe stays as the sender wrote it.

Which key signs: the ``[[dkim]]`` entries of the most specific configured domain that
is the From domain or one of its parents; every *active* selector of that domain signs
(two during a key rotation: a dual signature, either of which verifies).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from smtplb.mailauth.canon import relaxed_body, relaxed_fields, relaxed_header, split_headers

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
_FOLD_WSP = re.compile(rb"\r\n[ \t]+")


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


@functools.lru_cache(maxsize=4096)
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


def _signed_headers(fields: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, ...], bytes]:
    """The ``h=`` names and the canonicalised fields they cover, in that order: a
    repeated name once per instance, taken from the bottom up (§5.4.2), plus once more
    for an over-signed name (which covers nothing, so an added instance breaks it).
    ``fields`` are :func:`~smtplb.mailauth.canon.relaxed_fields`."""
    present: dict[bytes, list[bytes]] = {}
    for lower, canonical in fields:
        if lower in _SIGNED:
            present.setdefault(lower, []).append(canonical)
    names: list[str] = []
    data: list[bytes] = []
    for wanted, text in _SIGNED_ORDER:
        instances = present.get(wanted)
        if instances is not None:
            for canonical in reversed(instances):
                names.append(text)
                data.append(canonical)
        if wanted in _OVER_SIGNED:
            names.append(text)
    data.append(b"")
    return tuple(names), b"\r\n".join(data)


def _fold_b64(value: bytes, width: int = 72) -> bytes:
    return b"\r\n\t ".join(value[i : i + width] for i in range(0, len(value), width))


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


@functools.lru_cache(maxsize=256)
def _field_parts(
    algorithm: str, domain: str, selector: str, names: tuple[str, ...]
) -> tuple[bytes, bytes, bytes, bytes]:
    """What a ``DKIM-Signature`` field of this key over these names always holds, around
    its ``t=`` and ``bh=`` values: (as sent, before t=; as sent, from after t= to bh=;
    the same two relaxed). The same names come back message after message."""
    head = (
        f"DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed; d={domain};\r\n\ts={selector}; t="
    ).encode("ascii")
    middle = f";\r\n\th={_fold_names(names)};\r\n\tbh=".encode("ascii")
    relaxed_head = relaxed_header(b"DKIM-Signature", head + b"\r\n")[:-2]
    relaxed_middle = _FOLD_WSP.sub(b" ", middle)
    return head, middle, relaxed_head, relaxed_middle


def signature_input(
    key: SigningKey, names: tuple[str, ...], signed: bytes, body_hash: bytes, timestamp: int
) -> tuple[bytes, bytes]:
    """For one key: the ``DKIM-Signature`` field as sent up to its empty ``b=``, and the
    data its signature covers (the canonicalised header fields ``signed`` that ``names``
    lists, then this field itself relaxed, without its CRLF: §3.7)."""
    head, middle, relaxed_head, relaxed_middle = _field_parts(
        key.algorithm, key.domain, key.selector, names
    )
    t = b"%d" % timestamp
    template = b"".join((head, t, middle, body_hash, b";\r\n\tb="))
    data = b"".join((signed, relaxed_head, t, relaxed_middle, body_hash, b"; b="))
    return template, data


def signature(key: PrivateKey, data: bytes) -> bytes:
    """The signature over ``data``: the only CPU-heavy step (OpenSSL, without the GIL)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def finish(template: bytes, signature: bytes) -> bytes:
    """The complete field: ``template`` (ending in ``b=``) with the signature, folded."""
    return template + _fold_b64(base64.b64encode(signature)) + b"\r\n"


def signature_inputs(
    message: bytes, keys: Sequence[SigningKey], timestamp: int | None = None
) -> list[tuple[bytes, bytes]]:
    """:func:`signature_input` for each key, the canonical forms made once for all.

    ``message`` is the exact content that will be sent: header block, blank line, body,
    all lines ending in CRLF."""
    end = message.find(b"\r\n\r\n")
    block, body = (message[: end + 2], message[end + 4 :]) if end >= 0 else (message, b"")
    names, signed = _signed_headers(relaxed_fields(block))
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    when = int(time.time()) if timestamp is None else timestamp
    return [signature_input(k, names, signed, body_hash, when) for k in keys]


def sign_message(message: bytes, keys: Sequence[SigningKey], timestamp: int | None = None) -> bytes:
    """The ``DKIM-Signature`` fields (one per key) to put on top of ``message``."""
    inputs = signature_inputs(message, keys, timestamp)
    return b"".join(
        finish(template, signature(k.private_key, data))
        for k, (template, data) in zip(keys, inputs, strict=True)
    )


def _signatures(keys: Sequence[PrivateKey], datas: Sequence[bytes]) -> list[bytes]:
    return [signature(k, d) for k, d in zip(keys, datas, strict=True)]


def offload_signing(workers: int, cpus: int | None) -> bool:
    """Whether RSA signatures go to a thread: only when a core is left over for it.

    With a worker process per core (or more), every core already runs an event loop,
    so a signing thread adds no parallelism, only its cost: handing each signature over
    and back, and the GIL passing between the loop and the thread at every call, which
    cost the loop about as much CPU as the signature itself under case (a) of
    bench/run.py. There the signature is made in place: about 0.25 ms of the loop's
    time for RSA-2048, as long as intake's own work on one message."""
    return workers < (cpus or 1)


class DkimSigner:
    """Signs at intake, before the message is stored.

    The canonical forms are made on the caller's thread (header and body passes in C,
    tens of µs, like the header parsing intake already does there). An RSA signature
    (about 0.25 ms for 2048 bits, OpenSSL without the GIL) goes to the signing thread
    when ``offload`` (see :func:`offload_signing`); an Ed25519 one (about 25 µs) is
    always made in place: handing it to a thread and back costs more than making it.
    """

    def __init__(self, keyring: KeyRing, *, offload: bool = True) -> None:
        self.keyring = keyring
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dkim") if offload else None

    def keys_for(self, message: bytes) -> list[SigningKey]:
        """The keys that sign ``message`` (none: it goes out unsigned)."""
        if not self.keyring:
            return []
        end = message.find(b"\r\n\r\n")
        domain = from_domain(split_headers(message[: end + 2] if end >= 0 else message))
        return self.keyring.for_domain(domain) if domain else []

    async def sign(self, message: bytes, domain: str | None = None) -> bytes:
        """``message`` with its signatures on top, or unchanged when no key covers it.
        ``domain``: its From domain when the caller has parsed it already."""
        if not self.keyring:
            return message
        keys = self.keyring.for_domain(domain) if domain else self.keys_for(message)
        if not keys:
            return message
        inputs = signature_inputs(message, keys)
        private = [k.private_key for k in keys]
        datas = [data for _, data in inputs]
        if self._pool is None or all(isinstance(k, ed25519.Ed25519PrivateKey) for k in private):
            signatures = _signatures(private, datas)
        else:
            loop = asyncio.get_running_loop()
            signatures = await loop.run_in_executor(self._pool, _signatures, private, datas)
        fields = [finish(t, sig) for (t, _), sig in zip(inputs, signatures, strict=True)]
        return b"".join((*fields, message))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        where = "in a thread" if self._pool is not None else "in place"
        return f"DkimSigner({self.keyring!r}, RSA {where})"
