"""Mailbox and path syntax of RFC 5321 (with RFC 6531 UTF-8): shared by intake
and the HTTP API, so both accept and refuse the same addresses."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

# RFC 5321 / RFC 6531 address syntax. Non-ASCII is allowed by the pattern and
# then refused unless the transaction is SMTPUTF8.
_U = "\u0080-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]{{0,61}}[A-Za-z0-9{_U}])?"
_ADDRESS_RE: Final = re.compile(
    rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|{_QUOTED})@(?P<domain>{_LABEL}(?:\.{_LABEL})*|\[[^\[\]\\ ]+\])"
)
# A bracketed path; a quoted local part may hold '>'.
_PATH_RE: Final = re.compile(r'\s*<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
# Anything else in brackets is an address, if a bad one (5.1.x, not 5.5.4).
_LOOSE_PATH_RE: Final = re.compile(r"\s*<([^>]*)>")


def valid_address(address: str) -> bool:
    """``local@domain`` with a valid domain or address literal (RFC 5321 / 6531)."""
    match = _ADDRESS_RE.fullmatch(address)
    if match is None:
        return False
    domain = match["domain"]
    if len(domain) > 255:
        return False
    if domain.startswith("["):
        literal = domain[1:-1]
        try:
            if literal[:5].upper() == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
    return True


def parse_path(text: str) -> tuple[str, list[str]] | None:
    """``<address> PARAM...`` -> (address, params); None if no bracketed path.

    The address is returned as written ('' for ``<>``), source route dropped.
    """
    end = text.find(">") if text.startswith("<") else -1
    if end > 0 and '"' not in (address := text[1:end]) and "<" not in address:
        # What _PATH_RE matches for the usual <local@domain> (its per-character
        # alternation costs about as much as the rest of a command's handling).
        rest = text[end + 1 :]
    else:
        match = _PATH_RE.match(text) or _LOOSE_PATH_RE.match(text)
        if match is None:
            return None
        rest = text[match.end() :]
        address = match[1]
    if rest and not rest.startswith(" "):
        return None
    if address.startswith("@"):  # obsolete source route "@a,@b:user@c"
        _, colon, mailbox = address.partition(":")
        if colon and mailbox:
            address = mailbox
    return address, rest.split()
