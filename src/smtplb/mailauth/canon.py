"""DKIM relaxed canonicalisation (RFC 6376 §3.4.2 and §3.4.4), pure functions on bytes.

Verified against dkimpy (the reference implementation) by the unit tests, on
folded headers, trailing whitespace, empty bodies and bodies without a final CRLF.
"""

from __future__ import annotations

import re

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_TO_REDUCE = re.compile(rb"[ \t]*\t[ \t]*| {2,}")  # what is not already one space
_TRAILING_WSP = re.compile(rb" \r\n")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def split_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    """A header block (each field ending in CRLF) → ``(name, raw field incl. its CRLF)``
    pairs in order; the raw field keeps its folding byte for byte."""
    fields: list[tuple[bytes, bytes]] = []
    start = 0
    n = len(block)
    while start < n:
        end = block.find(b"\r\n", start)
        while end >= 0 and end + 2 < n and block[end + 2] in b" \t":
            end = block.find(b"\r\n", end + 2)
        if end < 0:
            end = n - 2
        raw = block[start : end + 2]
        name = raw.split(b":", 1)[0].rstrip(b" \t")
        fields.append((name, raw))
        start = end + 2
    return fields


def relaxed_header(name: bytes, raw: bytes) -> bytes:
    """One header field, relaxed: lower-cased name, unfolded, whitespace runs to one
    space, none around the colon or at the end; with its CRLF."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    if value.endswith(b"\r\n"):
        value = value[:-2]
    # Every CRLF inside a field is a fold (split_headers ends a field at a CRLF not
    # followed by whitespace), so unfolding is removing them. Each step looks first:
    # most fields have nothing to change, and a regex pass costs more than the search.
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.strip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """Every field of a header block, relaxed, in order: ``(lower-cased name, field
    without its CRLF)`` — :func:`relaxed_header` for the whole block at once.

    Unfolding and the whitespace runs are a few passes over the block in C, instead of
    a function call per field: what signing costs besides the signature itself."""
    if b"\r\n " in block or b"\r\n\t" in block:
        block = _FOLD.sub(b"", block)
    if b"\t" in block or b"  " in block:
        block = _WSP_RUN.sub(b" ", block)
    fields: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            lower = name.strip(b" ").lower()
            fields.append((lower, lower + b":" + value.strip(b" ")))
    return fields


def relaxed_body(body: bytes) -> bytes:
    """The body, relaxed: whitespace runs to one space, none at line ends, no trailing
    empty lines; a non-empty body ends with CRLF, an empty one stays empty."""
    # Each step first looks for work to do: a substitution that replaces every single
    # space by itself costs 100x the search (this runs on every signed message).
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_REDUCE.sub(b" ", body)
    if b" \r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    end = len(body)
    if end and body[end - 1] == 0x20:  # the last line had no CRLF
        end -= 1
    while end >= 2 and body[end - 2 : end] == b"\r\n":
        end -= 2
    return body[:end] + b"\r\n" if end else b""
