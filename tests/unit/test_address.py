"""RFC 5321 path parsing: the fast path for ``<local@domain>`` agrees with the regexes."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smtplb.intake.address import _LOOSE_PATH_RE, _PATH_RE, parse_path


def _by_the_regexes(text: str) -> tuple[str, list[str]] | None:
    """parse_path as the regexes alone say it (the definition the fast path keeps)."""
    match = _PATH_RE.match(text) or _LOOSE_PATH_RE.match(text)
    if match is None:
        return None
    rest = text[match.end() :]
    if rest and not rest.startswith(" "):
        return None
    address = match[1]
    if address.startswith("@"):
        _, colon, mailbox = address.partition(":")
        if colon and mailbox:
            address = mailbox
    return address, rest.split()


@settings(max_examples=1000)
@given(st.text(alphabet=st.sampled_from('<>"\\ @:.,ab\t'), max_size=24))
@example("<bench@example.com>")
@example("<> SIZE=100")
@example('<"a>b"@x.test> BODY=8BITMIME')
@example("<@r1,@r2:user@x.test>")
@example("<a<b@x.test>")
@example("<a@x.test>junk")
@example(" <a@x.test>")
def test_parse_path_agrees_with_the_regexes(text: str) -> None:
    assert parse_path(text) == _by_the_regexes(text)
