"""Messages built from the fields of ``POST /api/v1/messages``.

Every field that becomes a header (``from``, ``to``, ``subject``, the names
and values of ``headers``) is checked before it reaches the ``email``
package: no line breaks of any kind (CR, LF, NEL, U+2028, U+2029, VT, FF,
the ASCII separators), no NUL or other control character (TAB is fine), no
unpaired surrogate. A bad field is a 422 naming it; never a 500, and never an
injected header.
"""

from __future__ import annotations

import re
import unicodedata
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from starlette.responses import JSONResponse

from smtplb.api.problem import problem

# Header field names (RFC 5322 §3.6.8): printable ASCII except ":".
_FIELD_NAME = re.compile(r"[!-9;-~]{1,100}")
# Set by the builder from other fields; "raw" gives full control.
_OWN_HEADERS = {
    "from": "'from'",
    "to": "'to'",
    "subject": "'subject'",
    "mime-version": "'text' and 'html'",
    "content-type": "'text' and 'html'",
    "content-transfer-encoding": "'text' and 'html'",
}
_CONTROL_NAMES = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\x0b": "VT", "\x0c": "FF", "\x85": "NEL"}


# Control characters (Unicode Cc) but TAB, the line and paragraph separators, and
# unpaired surrogates. Searched only when str.isprintable() (C speed) says there
# may be one: it is False for all of these, and for a few harmless others.
_UNSAFE_IN_HEADER = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def unsafe_character(value: str, *, in_header: bool = True) -> str | None:
    """The first character that may not appear in the field, described; None if clean.

    In a header: any control character but TAB (CR, LF, NUL, NEL …), the line and
    paragraph separators U+2028/U+2029, and unpaired surrogates. In a body: NUL
    (no BINARYMIME) and unpaired surrogates; line breaks are the body's business.
    """
    if in_header:
        match = None if value.isprintable() else _UNSAFE_IN_HEADER.search(value)
        char = match[0] if match else None
    else:
        char = "\x00" if "\x00" in value else None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = value[exc.start]
    if char is None:
        return None
    if unicodedata.category(char) == "Cs":
        return f"an unpaired surrogate (U+{ord(char):04X})"
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "a control character")
    return f"U+{ord(char):04X} ({name})"


def _invalid(field: str, why: str) -> JSONResponse:
    return problem(422, f"Invalid {field}", f"{field!r} {why}")


def check_envelope_headers(sender: str, rcpts: list[str]) -> JSONResponse | None:
    """422 when the sender or a recipient (valid as addresses) cannot be a header."""
    bad = unsafe_character(sender)
    if bad:
        return problem(422, "Invalid sender", f"'from' contains {bad}")
    for rcpt in rcpts:
        bad = unsafe_character(rcpt)
        if bad:
            return problem(422, "Invalid recipients", f"{rcpt!r} in 'to' contains {bad}")
    return None


def _text_field(body: dict[str, Any], field: str, *, in_header: bool) -> str | JSONResponse | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        return _invalid(field, "must be a string")
    bad = unsafe_character(value, in_header=in_header)
    if bad:
        return _invalid(field, f"contains {bad}")
    return value


def raw_content(raw: Any) -> bytes | JSONResponse:
    """The ``raw`` field as message bytes with CR LF line ends."""
    if not isinstance(raw, str):
        return problem(422, "Invalid raw", "'raw' must be the message as a string")
    try:
        if "\x00" in raw:
            raise ValueError
        content = raw.encode("utf-8")
    except ValueError:  # UnicodeEncodeError: an unpaired surrogate
        return _invalid("raw", f"contains {unsafe_character(raw, in_header=False)}")
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def build_message(sender: str, rcpts: list[str], body: dict[str, Any]) -> bytes | JSONResponse:
    """``{subject, text, html, headers}`` → message bytes, or a 422 naming the bad field."""
    fields: dict[str, str | None] = {}
    for name, in_header in (("subject", True), ("text", False), ("html", False)):
        value = _text_field(body, name, in_header=in_header)
        if isinstance(value, JSONResponse):
            return value
        fields[name] = value
    text, html = fields["text"], fields["html"]
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return problem(422, "Invalid headers", "'headers' must map names to strings")
    if text is None and html is None:
        return problem(422, "No content", "give 'raw', or 'text' and/or 'html'")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender or "<>"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = fields["subject"] or ""
    for name, value in headers.items():
        refused = _header_problem(name, value)
        if refused is None:
            refused = _add_header(msg, name, value)
        if refused is not None:
            return problem(422, "Invalid headers", refused)
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def _header_problem(name: str, value: str) -> str | None:
    if not _FIELD_NAME.fullmatch(name):
        return (
            f"header name {name!r} must be 1 to 100 printable ASCII characters "
            "without spaces or ':'"
        )
    own = _OWN_HEADERS.get(name.lower())
    if own is not None:
        return f"header {name!r} is set from {own}; send 'raw' to write every header yourself"
    bad = unsafe_character(value)
    if bad:
        return f"header {name!r} contains {bad}"
    return None


def _add_header(msg: EmailMessage, name: str, value: str) -> str | None:
    # The email package parses structured headers (dates, addresses, ids) as they
    # are set; on malformed values it records defects or, for some, raises
    # whatever its parser hits (ValueError, IndexError …). Both are the caller's
    # input error, reported with the header's name.
    try:
        msg[name] = value
        defects = msg.get_all(name, [])[-1].defects
    except ValueError as exc:  # e.g. "There may be at most 1 Reply-To headers in a message"
        return f"header {name!r}: {exc}"
    except Exception:
        return f"header {name!r} is not valid: {value!r} cannot be parsed"
    if defects:
        why = str(defects[0]) or type(defects[0]).__name__
        return f"header {name!r} is not valid: {why}"
    return None
