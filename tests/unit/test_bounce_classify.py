"""Bounce classification against a golden set of real reply texts (tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtplb.smtp.bounce import Action, BounceCategory, classify_bounce

GOLDEN = Path(__file__).parent.parent / "data" / "bounce_golden.tsv"


def _golden() -> list[tuple[str, int, str | None, str, str, str]]:
    rows = []
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        expected, code, enhanced, text, provider, source = line.split("\t")
        rows.append(
            (expected, int(code), None if enhanced == "-" else enhanced, text, provider, source)
        )
    return rows


ROWS = _golden()


def test_the_golden_set_is_large_and_sourced() -> None:
    assert len(ROWS) >= 150
    assert all(source.strip() for *_, source in ROWS)
    assert {r[0] for r in ROWS} <= {c.value for c in BounceCategory}


def test_every_golden_reply_is_classified_as_expected() -> None:
    wrong = [
        f"{code} {enhanced} {text!r}: got {got.value}, expected {expected} ({source})"
        for expected, code, enhanced, text, provider, source in ROWS
        if (got := classify_bounce(code, enhanced, text, provider).category).value != expected
    ]
    print(f"golden set: {len(ROWS) - len(wrong)}/{len(ROWS)} agree")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "action"),
    [
        (
            550,
            "5.1.1",
            "The email account that you tried to reach does not exist.",
            Action.SUPPRESS,
        ),
        (450, "4.1.1", "Recipient address rejected: User unknown", Action.DEFER),
        (550, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked", Action.ELSEWHERE),
        (
            421,
            "4.7.0",
            "[TSS04] Messages temporarily deferred due to user complaints",
            Action.DEFER,
        ),
        (452, "4.2.2", "The email account that you tried to reach is over quota.", Action.DEFER),
        (552, "5.2.2", "Mailbox full", Action.DEFER),
        (552, "5.3.4", "Message size exceeds fixed limit", Action.BOUNCE),
        (556, "5.1.10", "Recipient address has null MX", Action.BOUNCE),
        (554, "5.7.1", "Relay access denied", Action.BOUNCE),
        (554, None, "Transaction failed", Action.ELSEWHERE),
    ],
)
def test_what_delivery_does(code: int, enhanced: str | None, text: str, action: Action) -> None:
    assert classify_bounce(code, enhanced, text).action is action


def test_only_permanent_address_failures_suppress() -> None:
    hard = classify_bounce(550, "5.1.1", "User unknown")
    assert hard.is_hard and not hard.is_policy
    assert not classify_bounce(450, "4.1.1", "User unknown").is_hard
    assert not classify_bounce(550, "5.7.1", "blocked using zen.spamhaus.org").is_hard
