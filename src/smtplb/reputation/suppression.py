"""Adding to the suppression list from delivery: hard bounces (and, through the
feedback API, complaints), without holding up the dispatcher."""

from __future__ import annotations

import asyncio
import logging

from smtplb.clock import Clock
from smtplb.reputation.state import State, Suppression

log = logging.getLogger("smtplb.reputation")


class BounceSuppressor:
    """The dispatcher's ``on_hard_bounce``: suppress ``address`` for ``reason``."""

    def __init__(self, state: State, clock: Clock) -> None:
        self.state = state
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, address: str, reason: str) -> None:
        entry = Suppression(address, reason, "bounce", self.clock.wall())
        task = asyncio.get_running_loop().create_task(self._add(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, entry: Suppression) -> None:
        try:
            await self.state.suppress([entry])
        except Exception:
            log.exception("could not suppress %s", entry.address)

    async def settle(self) -> None:
        """Wait for the additions under way (a stop, a test)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def __repr__(self) -> str:
        return f"BounceSuppressor({len(self._tasks)} pending, {self.state!r})"
