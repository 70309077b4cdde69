"""Command arguments the server session reads: MAIL parameters, SASL responses. Pure."""

from __future__ import annotations

import binascii
from typing import NamedTuple

__all__ = ["MailParameters", "decode_sasl", "mail_parameters", "plain_credentials"]


class MailParameters(NamedTuple):  # (a frozen dataclass costs ~1 us per MAIL)
    size: int | None = None  # SIZE=n (RFC 1870)
    body_8bit: bool = False  # BODY=8BITMIME (RFC 6152)
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531)


def mail_parameters(params: list[str]) -> MailParameters | str:
    """The parameters after ``MAIL FROM:<…>``, or the name of the one that is wrong.

    A known parameter with a bad value gives its upper-cased name; an unknown
    parameter gives ``""``.
    """
    size: int | None = None
    smtputf8 = body_8bit = False
    for param in params:
        key, _, value = param.partition("=")
        key = key.upper()
        if key == "SIZE" and value.isdigit() and value.isascii():
            size = int(value)
        elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
            body_8bit = value.upper() == "8BITMIME"
        elif key == "SMTPUTF8" and not value:
            smtputf8 = True
        elif key == "AUTH" and value:  # RFC 4954 AUTH=<mailbox>: accepted, ignored
            pass
        else:
            return key if key in ("SIZE", "BODY", "SMTPUTF8") else ""
    return MailParameters(size, body_8bit, smtputf8)


def decode_sasl(text: str) -> str | None:
    """A base64 SASL response (``=`` is empty) as text; None when it is not base64 UTF-8."""
    text = text.strip()
    if text == "=":
        return ""
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def plain_credentials(decoded: str) -> tuple[str, str, str] | None:
    """``(authzid, username, password)`` of an AUTH PLAIN response; None when malformed."""
    parts = decoded.split("\0")
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]
