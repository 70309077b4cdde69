"""Large messages on the intake path: stored whole, without extra copies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from smtplb.intake.headers import prepare_message, split_message
from smtplb.model import Envelope
from smtplb.spool.base import NewMessage, NewRecipient
from smtplb.spool.sqlite import SqliteSpool


def test_a_large_message_is_stored_and_read_back_byte_for_byte(tmp_path: Path) -> None:
    """Above 1 MB store() writes the content with incremental blob I/O."""
    small = b"Subject: s\r\n\r\nsmall\r\n"
    large = b"Subject: l\r\n\r\n" + bytes(range(256)) * 8_000 + b"\r\n"  # ~2 MB, every byte

    async def main() -> None:
        spool = SqliteSpool(tmp_path / "spool.db")
        await spool.open()
        try:
            for queue_id, content in (("Q1", small), ("Q2", large)):
                now = time.time()
                rcpt = NewRecipient("b@example.net", "main", 0)
                message = NewMessage(
                    queue_id, "a@example.com", (rcpt,), content, "<m>", now, now + 60
                )
                await spool.store(message)
            assert await spool.get_content("Q1") == small
            assert await spool.get_content("Q2") == large
            [claimed_small, claimed_large] = sorted(
                await spool.claim_ready(time.time() + 1, 10), key=lambda m: m.queue_id
            )
            assert (claimed_small.content, claimed_large.content) == (small, large)
        finally:
            await spool.close()

    asyncio.run(main())


def test_the_body_is_not_copied_to_split_the_headers_off() -> None:
    data = b"Subject: x\r\n\r\n" + b"body\r\n" * 1000
    block, rest = split_message(data)
    assert block == b"Subject: x\r\n" and isinstance(rest, memoryview) and rest.obj is data
    content, headers, _, _ = prepare_message(data, Envelope(helo="c"), "mx.test", "Q1", time.time())
    assert content.endswith(data[len(block) :]) and ("subject", "x") in headers
