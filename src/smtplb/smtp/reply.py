"""The SMTP reply: one type for what the server says and what the client hears."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Reply", "parse_reply", "split_enhanced_code"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, optional RFC 3463 ``enhanced_code``, ``text``.

    ``text`` may hold several lines separated by ``\\n``; they become a
    multi-line reply on the wire.
    """

    code: int
    enhanced_code: str | None = None
    text: str = ""

    @property
    def is_success(self) -> bool:
        """2xx: the command did what was asked (RFC 5321 positive completion)."""
        return 200 <= self.code < 300

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx (positive completion or intermediate)."""
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        text = self.text
        if "\n" not in text:  # one line: nearly every reply
            code, enhanced = self.code, self.enhanced_code
            line = f"{code} {enhanced} {text}" if enhanced else f"{code} {text}"
            return (line.rstrip(" ") + "\r\n").encode("utf-8", "replace")
        lines = text.split("\n")
        prefix = f"{self.enhanced_code} " if self.enhanced_code else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        prefix = f"{self.enhanced_code} " if self.enhanced_code else ""
        return f"{self.code} {prefix}{self.text}".strip()


# RFC 3463: class.subject.detail, the class matching the reply code's first digit.
_ENHANCED_CODE: Final = re.compile(r"([245])\.(?:[0-9]{1,3})\.(?:[0-9]{1,3})(?= |$)")


def split_enhanced_code(code: int, text: str) -> tuple[str | None, str]:
    """``(enhanced code, rest)`` of a reply line's text; ``(None, text)`` without one.

    The enhanced code counts only when its class is the reply code's first digit.
    """
    match = _ENHANCED_CODE.match(text)
    if match is None or match.group(1) != str(code)[0]:
        return None, text
    return match.group(0), text[match.end() + 1 :]


def parse_reply(lines: list[bytes]) -> Reply:
    """One reply from its wire lines (without line endings), already checked for codes."""
    code = int(lines[0][:3])
    texts = [line[4:].decode("utf-8", "replace") for line in lines]
    enhanced_code, _ = split_enhanced_code(code, texts[0])
    if enhanced_code is not None:
        prefix = enhanced_code + " "
        texts = [
            t[len(prefix) :] if t.startswith(prefix) else "" if t == enhanced_code else t
            for t in texts
        ]
    return Reply(code, enhanced_code, "\n".join(texts))
