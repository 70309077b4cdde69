"""TraceBook: what it hands to ``persist`` (the spool's ``note_trace``)."""

from __future__ import annotations

from typing import Any

from smtplb.observability.trace import TraceBook
from smtplb.smtp.reply import Reply


def test_attempt_replies_are_persisted_as_their_text() -> None:
    """The spool encodes details as JSON: a reply goes there as the text queue show
    prints, not as an object (msgspec would encode a dataclass field by field)."""
    stored: list[tuple[str, float, str, tuple[Any, ...]]] = []
    book = TraceBook(persist=lambda *row: stored.append(row))
    reply = Reply(250, "2.0.0", "Ok: queued")
    book.add("Q1", "attempt", "m1", "192.0.2.9:25", (("a@x.test", reply),))
    [(qid, ts, step, details)] = stored
    assert (qid, step, details) == (
        "Q1",
        "attempt",
        ("m1", "192.0.2.9:25", (("a@x.test", str(reply)),)),
    )
    # and the book itself still renders from the reply it keeps
    [shown] = book.get("Q1", [(ts, step, details)])
    assert shown["outcomes"] == {"a@x.test": str(reply)}
