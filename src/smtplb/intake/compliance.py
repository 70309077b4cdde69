"""Bulk-sender guardrails at intake (SPEC §2.5): one-click unsubscribe for marketing
and bulk mail (RFC 2369, RFC 8058), as Gmail and Yahoo require since 2024.

:func:`unsubscribe_problem` is a pure decision on the parsed headers; the pipeline
turns it into a refusal (``[compliance] list_unsubscribe = "reject"``: 550 5.7.1 with
the reason) or a warning (``"warn"``: logged and counted, accepted).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from smtplb.mailauth.sign import address_domain
from smtplb.smtp.reply import Reply

GUARDED_CLASSES = frozenset({"marketing", "bulk"})
ONE_CLICK = "list-unsubscribe=one-click"
_URI = re.compile(r"<\s*([^>\s]*)\s*>")


class MessageRefused(Exception):
    """A message intake will not take; ``reply`` says why (with its enhanced code)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def unsubscribe_problem(headers: Sequence[tuple[str, str]], content_class: str) -> str | None:
    """What a marketing or bulk message lacks for one-click unsubscribe, or None.

    ``headers`` are (lower-cased name, unfolded value). Needed: a ``List-Unsubscribe``
    with a ``mailto:`` or ``https:`` URI; with an ``https:`` one, also
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 §3.1)."""
    if content_class not in GUARDED_CLASSES:
        return None
    values = [v for n, v in headers if n == "list-unsubscribe"]
    uris = [u.lower() for v in values for u in _URI.findall(v)]
    https = [u for u in uris if u.startswith("https:")]
    mailto = [u for u in uris if u.startswith("mailto:")]
    if not https and not mailto:
        if values:
            return (
                f"{content_class} mail needs List-Unsubscribe with a <mailto:> or <https:> "
                "URI (RFC 2369); the header has neither"
            )
        return (
            f"{content_class} mail needs a List-Unsubscribe header with a <mailto:> or "
            "<https:> URI, and List-Unsubscribe-Post: List-Unsubscribe=One-Click for "
            "https (RFC 8058)"
        )
    if https:
        post = [v.strip().lower() for n, v in headers if n == "list-unsubscribe-post"]
        if ONE_CLICK not in post:
            return (
                "List-Unsubscribe has an https URI but no "
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058)"
            )
    return None


def from_domain(headers: Sequence[tuple[str, str]]) -> str | None:
    """The domain of the first From address (``headers`` as :func:`unsubscribe_problem`)."""
    for name, value in headers:
        if name == "from":
            return address_domain(value)
    return None


def refusal(problem: str) -> Reply:
    return Reply(550, "5.7.1", f"Message refused: {problem}")
