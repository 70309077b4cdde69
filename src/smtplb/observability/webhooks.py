"""Webhooks: delivery events and member state changes, POSTed as JSON.

Each endpoint has its own bounded queue and worker, so a slow or dead
receiver never blocks delivery or the other endpoints: when a queue is full
the oldest events are dropped and counted. Events go out in batches (a JSON
array of delivery-log records, :class:`~smtplb.observability.record.DeliveryRecord`,
at most ``batch`` per request), retried with exponential backoff; a
``secret`` adds ``X-Smtplb-Signature: sha256=<hex HMAC of the body>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
from collections import deque

import httpx

from smtplb.config import WebhookConfig
from smtplb.observability.record import DeliveryRecord, encode

log = logging.getLogger("smtplb.webhooks")


class WebhookEndpoint:
    def __init__(self, config: WebhookConfig, *, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.pending: deque[DeliveryRecord] = deque(maxlen=config.max_queue)
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._wake = asyncio.Event()

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, pattern) for pattern in self.config.events)

    def offer(self, record: DeliveryRecord) -> None:
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1  # deque drops the oldest
        self.pending.append(record)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch = [
                self.pending.popleft() for _ in range(min(self.config.batch, len(self.pending)))
            ]
            await self._post_with_retries(batch)

    async def _post_with_retries(self, batch: list[DeliveryRecord]) -> None:
        body = encode(batch)
        headers = {"Content-Type": "application/json", "User-Agent": "smtplb-webhook"}
        if self.config.secret:
            digest = hmac.new(self.config.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Smtplb-Signature"] = f"sha256={digest}"
        delay = float(self.config.retry_base)
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                response = await self.client.post(
                    self.config.url, content=body, headers=headers, timeout=self.config.timeout
                )
                if response.status_code < 300:
                    self.sent += len(batch)
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            self.failures += 1
            log.warning("webhook %s: attempt %d failed (%s)", self.config.url, attempt, reason)
            if attempt < self.config.max_attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)
        self.dropped += len(batch)
        log.error("webhook %s: gave up on %d events", self.config.url, len(batch))

    def __repr__(self) -> str:
        return (
            f"WebhookEndpoint({self.config.url}, {len(self.pending)} pending, "
            f"{self.sent} sent, {self.dropped} dropped)"
        )


class Webhooks:
    def __init__(self, configs: list[WebhookConfig]) -> None:
        self._client = httpx.AsyncClient()
        self.endpoints = [WebhookEndpoint(c, client=self._client) for c in configs]
        self._tasks: list[asyncio.Task[None]] = []

    def on_record(self, record: DeliveryRecord) -> None:
        event = record.event
        for endpoint in self.endpoints:
            if endpoint.wants(event):
                endpoint.offer(record)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(e.run()) for e in self.endpoints]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
