"""DKIM keys: load the ``[[dkim]]`` PEM files, generate new ones, write their DNS record.

A key that cannot be used is a :class:`~smtplb.config.ConfigError` naming the entry and
the file (``smtplb check``, start and SIGHUP reload all load through here).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtplb.config import ConfigError, DkimConfig
from smtplb.mailauth.sign import KeyRing, PrivateKey, SigningKey

MIN_RSA_BITS = 1024
ADVISED_RSA_BITS = 2048
ALGORITHMS = ("rsa", "ed25519")


class KeyProblem(Exception):
    """Why a key file cannot be used (the message names the file)."""


def load_private_key(path: str | Path) -> PrivateKey:
    """An RSA (≥ 1024 bits) or Ed25519 private key from a PEM file; KeyProblem if not."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyProblem(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyProblem(f"{path}: the key is encrypted; give an unencrypted PEM") from None
    except ValueError:
        raise KeyProblem(f"{path}: not a PEM private key (RSA or Ed25519)") from None
    except Exception as exc:  # cryptography raises its own types for odd inputs
        raise KeyProblem(f"{path}: not a usable private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(
                f"{path}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} "
                f"({ADVISED_RSA_BITS} advised)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyProblem(f"{path}: a {type(key).__name__}; DKIM takes RSA or Ed25519 keys")


def load_keyring(entries: Sequence[DkimConfig]) -> KeyRing:
    """Every ``[[dkim]]`` key, loaded; ConfigError naming each entry that fails."""
    keys: list[SigningKey] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        try:
            private = load_private_key(entry.key)
        except KeyProblem as exc:
            problems.append(f"dkim[{i}].key: {exc}")
            continue
        keys.append(
            SigningKey(
                domain=entry.domain.lower().rstrip("."),
                selector=entry.selector,
                private_key=private,
                path=entry.key,
                active=entry.active,
            )
        )
    if problems:
        raise ConfigError(problems)
    return KeyRing(keys)


def public_key_b64(key: PrivateKey) -> str:
    """The ``p=`` value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


def txt_value(key: PrivateKey) -> str:
    """The TXT record value to publish at ``SELECTOR._domainkey.DOMAIN``."""
    k = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    return f"v=DKIM1; k={k}; p={public_key_b64(key)}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """A long TXT value as the ≤ 255-byte strings DNS carries (joined by verifiers)."""
    return [value[i : i + size] for i in range(0, len(value), size)]


def zone_record(domain: str, selector: str, key: PrivateKey) -> str:
    """The record in zone-file form, ready to paste."""
    strings = " ".join(f'"{s}"' for s in txt_strings(txt_value(key)))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


def generate_key(algorithm: str, bits: int = ADVISED_RSA_BITS) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError(f"unknown algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")


def write_private_key(key: PrivateKey, path: str | Path) -> None:
    """PKCS#8 PEM, created with mode 0600 (never readable by others, even for an instant);
    an existing file is not overwritten."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
