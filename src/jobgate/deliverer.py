"""The worker's delivery loop: sends the outbox of jobs' ends (deliveries.py).

Each round claims the due deliveries (`Store.claim_deliveries`: each attempt counted and
leased by one node), makes one attempt of each at once (a webhook POST with httpx, or a
notification through Apprise), and records it (`Store.record_attempt`, which settles the
delivery and emits `delivery.succeeded`, `delivery.retrying` or `delivery.failed`). It
wakes when a job ends anywhere, and looks at least every `_POLL_S` for retries come due.

A node killed in the middle of an attempt leaves its lease to run out: another node then
makes the next attempt. A webhook keeps its `webhook-id` on every attempt, so a receiver
that got the killed node's request too can tell the second one is the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import httpx

from jobgate import notify, webhooks
from jobgate.deliveries import NOTIFY, WEBHOOK, Attempt, Delivery
from jobgate.model import FINAL_EVENTS, Event
from jobgate.store.rows import to_json

if TYPE_CHECKING:
    from jobgate.queue import JobQueue

log = logging.getLogger("jobgate.deliveries")

_POLL_S = 1.0
_BATCH = 16  # deliveries claimed (and attempted at once) per round
# After a job's end wakes it, the ends of that instant are looked at together: a burst of
# 1,000 jobs a second (most with nothing to deliver) costs ten claims of the outbox a
# second, not one a commit; a delivery leaves at most this much later.
_GATHER_S = 0.1
_LEASE_MARGIN_S = 5.0  # an attempt's lease: its timeout plus this


def shown_target(queue: JobQueue, delivery: Delivery) -> str:
    """A delivery's target as logs and the API may show it (no secret in it)."""
    url = queue.store.delivery_rules.resolve(delivery.target)
    if url is None:
        return "(a configured target no longer in the config)"
    return webhooks.shown_url(url) if delivery.channel == WEBHOOK else notify.shown_url(url)


class Deliverer:
    """Sends the deliveries of one queue's store, as worker node `worker`."""

    def __init__(self, queue: JobQueue, worker: str) -> None:
        self.queue = queue
        self.worker = worker
        self.settings = queue.settings
        self._wake = asyncio.Event()
        self._secret: str | None = None
        self._next_due = 0.0  # the earliest retry this node scheduled (wall clock)
        hooks, note = self.settings.webhooks, self.settings.notify
        self.lease_s = max(hooks.timeout, note.timeout) + _LEASE_MARGIN_S

    def _on_event(self, event: Event) -> None:
        if event.type in FINAL_EVENTS:
            self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        unsubscribe = self.queue.bus.on(self._on_event)
        try:
            # No proxy from the environment: the address a webhook may reach is checked
            # here, and a proxy would reach it instead.
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
                while True:
                    try:
                        batch = await self.queue.store.claim_deliveries(
                            self.worker, _BATCH, self.lease_s)
                    except Exception:  # the database went away a moment
                        log.exception("claiming deliveries failed; trying again")
                        batch = []
                    if batch:
                        await asyncio.gather(*(self._deliver(client, d) for d in batch))
                        continue
                    self._wake.clear()
                    # Until a job ends, or the retry this node set comes due; other
                    # nodes' retries are seen within _POLL_S.
                    # (With no retry of its own ahead, `_next_due` is in the past: that
                    # is a wait of _POLL_S, not of 0 s, which spun this loop on the store
                    # a thousand times a second on an idle node.)
                    due_in_s = self._next_due - time.time()
                    wait_s = min(_POLL_S, due_in_s) if due_in_s > 0 else _POLL_S
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait_s)
                        await asyncio.sleep(_GATHER_S)
        finally:
            unsubscribe()

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            attempt, permanent = await self._attempt(client, delivery)
            settled = await self.queue.store.record_attempt(delivery.id, attempt, permanent)
        except Exception:
            log.exception("delivery %s of job %s: the attempt could not be made",
                          delivery.id, delivery.job_id)
            return
        where = shown_target(self.queue, delivery)
        if settled is not None and settled.state == "pending":
            soonest = self._next_due if self._next_due > time.time() else settled.due_at
            self._next_due = min(soonest, settled.due_at)
        if settled is None:
            log.info("delivery %s: attempt %d came after its lease", delivery.id, attempt.n)
        elif attempt.ok:
            log.info("%s of job %s delivered to %s (attempt %d)", delivery.channel,
                     delivery.job_id, where, attempt.n)
        else:
            log.warning("%s of job %s to %s: attempt %d failed (%s); %s", delivery.channel,
                        delivery.job_id, where, attempt.n, attempt.error,
                        "giving up" if settled.state != "pending" else "will retry")

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery
                       ) -> tuple[Attempt, bool]:
        """One attempt, and whether its failure is for good."""
        n, now = delivery.attempts, time.time()
        rules = self.queue.store.delivery_rules
        url = rules.resolve(delivery.target)
        if url is None:
            return Attempt(n, now, 0.0, error="its target is no longer in the config",
                           worker=self.worker), True
        if now - delivery.created_at > rules.max_age_s:
            return Attempt(n, now, 0.0, error="older than webhooks.max_age",
                           worker=self.worker), True
        if delivery.channel == NOTIFY:
            files = notify.attachments(delivery.payload, self.queue.job_dir(delivery.job_id),
                                       self.settings.notify.attach_max_mb)
            return await notify.send(url, delivery.payload, files, n, self.worker,
                                     self.settings.notify.timeout), False
        hooks = self.settings.webhooks
        if delivery.source == "job":
            # Checked again: the name may lead elsewhere now than at submit.
            problem = await asyncio.to_thread(webhooks.address_problem, url,
                                              hooks.allow_private)
            if problem is not None:
                return Attempt(n, now, 0.0, error=f"webhook_url: {problem}",
                               worker=self.worker), not problem.startswith("cannot resolve")
        if self._secret is None:
            self._secret = await asyncio.to_thread(
                webhooks.load_or_create_secret, self.settings.data_path, hooks.secret)
        return await webhooks.post(client, url, to_json(delivery.payload), self._secret,
                                   delivery.id, n, self.worker, hooks.timeout), False
