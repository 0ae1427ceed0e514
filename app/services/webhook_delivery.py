"""The webhook delivery worker: fan the outbox out, claim what is due, send, record.

Each replica runs one :class:`WebhookWorker` (started with the app). It works in
three steps, each a short transaction, none of them on a request's path:

1. **Fan-out.** Events of the outbox not yet fanned out become one delivery per
   enabled endpoint that wants their type. One replica at a time (PostgreSQL: an
   advisory lock; SQLite: its single writer), and each event is claimed with a
   conditional UPDATE, so no event is fanned out twice.
2. **Claim.** A delivery is due when it is pending, its next attempt has come, no
   lease holds it, its endpoint is enabled, and no earlier delivery of the same user
   to the same endpoint is still pending: a user's events arrive in order, and a
   later one waits while an earlier one is failing. Due deliveries are leased with a
   conditional UPDATE (``FOR UPDATE SKIP LOCKED`` first on PostgreSQL), so two
   replicas never send one delivery at the same time.
3. **Send.** A signed POST (Standard Webhooks headers, signed with the
   ``standardwebhooks`` package), time-boxed by WEBHOOK_TIMEOUT_SECONDS; the answer
   is written back only by the lease's owner. A failure is retried with exponential
   backoff and jitter; an endpoint failing for WEBHOOK_DISABLE_AFTER_SECONDS is
   turned off and the admins are mailed.

Delivery is at least once: a replica killed after the receiver answered but before
the answer was written sends again once its lease ends, with the same ``webhook-id``,
which receivers use to drop duplicates. Two changes to one user committed at the
same moment on PostgreSQL may be delivered in either order.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx
from loguru import logger
from sqlalchemy import case, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from standardwebhooks import Webhook

from app.core.config import Settings
from app.core.database import rows_matched
from app.core.email import Mailer
from app.core.oauth_client import UnsafeUrl, public_addresses
from app.core.secret_box import SealError
from app.models import (
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    new_uuid,
    now_epoch,
)
from app.services.accounts import has_role
from app.services.notices import send_admin_notice

#: Key of the PostgreSQL advisory lock that makes one replica at a time fan out.
FANOUT_LOCK_KEY = 0x5748_4F4B  # "WHOK"
#: Events fanned out per transaction.
FANOUT_BATCH = 200
#: Deliveries one replica sends at the same time.
CONCURRENT_DELIVERIES = 16
#: A lease outlasts the attempt's time box by this much (writing the answer back).
LEASE_MARGIN_SECONDS = 10
#: How much of a receiver's answer the delivery log keeps.
RESPONSE_EXCERPT_CHARS = 500

_random = random.SystemRandom()


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: success, the HTTP status if any, an excerpt or a reason."""

    ok: bool
    status_code: int | None
    response: str


def retry_delay_seconds(settings: Settings, attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling from
    WEBHOOK_RETRY_BASE_SECONDS, capped at WEBHOOK_RETRY_MAX_SECONDS, then jittered down
    by up to a half (so that receivers coming back are not hit by every sender at once)."""
    exponent = min(attempts - 1, 30)
    doubled = settings.WEBHOOK_RETRY_BASE_SECONDS * 2**exponent
    ceiling = min(settings.WEBHOOK_RETRY_MAX_SECONDS, doubled)
    return max(1, math.ceil(ceiling * _random.uniform(0.5, 1.0)))


def failure_streak_gap_seconds(settings: Settings) -> int:
    """The longest pause between two failures of one streak: the longest wait between
    attempts, twice (jitter, a busy worker), and a lease."""
    return 2 * settings.WEBHOOK_RETRY_MAX_SECONDS + lease_seconds(settings)


def lease_seconds(settings: Settings) -> int:
    """How long a claimed delivery stays with its worker."""
    return math.ceil(settings.WEBHOOK_TIMEOUT_SECONDS) + LEASE_MARGIN_SECONDS


def payload_body(payload: dict[str, Any]) -> str:
    """The exact text sent (and signed): compact JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def signed_headers(secret: str, message_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (the timestamp is the attempt's)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }


# Fan-out --------------------------------------------------------------------------------


async def any_endpoint_enabled(session_factory: async_sessionmaker[AsyncSession]) -> bool:
    """Whether some endpoint receives events (else the worker has nothing to do)."""
    async with session_factory() as db:
        found = await db.scalar(
            select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True)).limit(1)
        )
    return found is not None


async def fan_out(session_factory: async_sessionmaker[AsyncSession]) -> int:
    """Turn up to FANOUT_BATCH new events into deliveries; how many events it took.

    An endpoint gets the events of its types recorded since it was created or last
    enabled. Older events no endpoint wants are skipped, not fanned out (retention
    deletes them): a first endpoint does not wait for the worker to walk the backlog.
    """
    async with session_factory() as db:
        if db.get_bind().dialect.name == "postgresql":
            await db.execute(select(func.pg_advisory_xact_lock(FANOUT_LOCK_KEY)))
        endpoints = (
            await db.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True)))
        ).all()
        if not endpoints:
            return 0
        wanted_after = min(endpoint.since_event_id for endpoint in endpoints)
        events = (
            await db.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.fanned_out.is_(False), WebhookEvent.id > wanted_after)
                .order_by(WebhookEvent.id)
                .limit(FANOUT_BATCH)
            )
        ).all()
        if not events:
            return 0
        claimed = set(
            await db.scalars(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id.in_([event.id for event in events]),
                    WebhookEvent.fanned_out.is_(False),
                )
                .values(fanned_out=True)
                .returning(WebhookEvent.id)
                .execution_options(synchronize_session=False)
            )
        )
        now = now_epoch()
        for event in events:
            if event.id not in claimed:
                continue
            for endpoint in endpoints:
                if event.type in endpoint.event_types and event.id > endpoint.since_event_id:
                    db.add(
                        WebhookDelivery(
                            endpoint_id=endpoint.id,
                            event_id=event.id,
                            user_key=event.user_uuid or "",
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
        await db.commit()
    return len(claimed)


# Claim ----------------------------------------------------------------------------------


async def claim_deliveries(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    owner: str,
    limit: int,
) -> list[int]:
    """Lease up to ``limit`` due deliveries to ``owner``; their ids, oldest first.

    The time is read once a connection is held: a wait for the pool must not eat
    into the lease the claim gives.
    """
    async with session_factory() as db:
        await db.connection()
        now = now_epoch()
        claimed = await _claim(db, settings, owner, limit, now)
        await db.commit()
    return claimed


async def _claim(
    db: AsyncSession, settings: Settings, owner: str, limit: int, now: int
) -> list[int]:
    earlier = aliased(WebhookDelivery)
    waits_for_earlier = exists().where(
        earlier.endpoint_id == WebhookDelivery.endpoint_id,
        earlier.user_key == WebhookDelivery.user_key,
        earlier.status == "pending",
        earlier.event_id < WebhookDelivery.event_id,
    )
    due = (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.lease_until <= now,
            WebhookEndpoint.enabled.is_(True),
            ~waits_for_earlier,
        )
        .order_by(WebhookDelivery.id)
        .limit(limit)
        # PostgreSQL: rows another replica is claiming are skipped, not waited for.
        # SQLite has no row locks (its writes are serialised) and no such clause.
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    )
    ids = list(await db.scalars(due))
    if not ids:
        return []
    claimed = await db.scalars(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(ids),
            WebhookDelivery.status == "pending",
            WebhookDelivery.lease_until <= now,
        )
        .values(lease_until=now + lease_seconds(settings), lease_owner=owner)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(claimed)


# Send -----------------------------------------------------------------------------------


async def post_signed(
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    timeout_seconds: float,
    allow_private: bool,
    verify: ssl.SSLContext | bool = True,
) -> Outcome:
    """POST ``body`` to ``url`` within ``timeout_seconds``; never raises.

    Unless private targets are allowed, the host must resolve to public addresses
    only, and the connection goes to an address that was checked (the name is not
    resolved again: its answer could change to an inside address). Redirects are not
    followed and proxies from the environment not used.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            target = httpx.URL(url)
            send_headers = {**headers, "content-type": "application/json"}
            extensions: dict[str, Any] = {}
            if not allow_private:
                parts = urlsplit(url)
                host = parts.hostname or ""
                port = parts.port or (443 if parts.scheme == "https" else 80)
                addresses = await asyncio.to_thread(public_addresses, host, port)
                send_headers["host"] = target.netloc.decode("ascii")
                extensions["sni_hostname"] = target.raw_host.decode("ascii")
                target = target.copy_with(host=addresses[0])
            async with (
                httpx.AsyncClient(
                    timeout=timeout_seconds, follow_redirects=False, trust_env=False, verify=verify
                ) as http,
                http.stream(
                    "POST",
                    target,
                    content=body.encode("utf-8"),
                    headers=send_headers,
                    extensions=extensions,
                ) as response,
            ):
                excerpt = b""
                async for chunk in response.aiter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= RESPONSE_EXCERPT_CHARS * 4:
                        break
                # Kept in a text column: no NUL (PostgreSQL refuses it), valid UTF-8.
                text = excerpt.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
                text = text[:RESPONSE_EXCERPT_CHARS]
                return Outcome(200 <= response.status_code < 300, response.status_code, text)
    except TimeoutError:
        return Outcome(False, None, f"no answer within {timeout_seconds:g} s")
    except UnsafeUrl as error:
        return Outcome(False, None, f"refused: {error}")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, UnicodeError, ValueError) as error:
        return Outcome(False, None, f"not delivered: {type(error).__name__}")


@dataclass(frozen=True)
class _Claimed:
    """What one attempt needs, read before the connection is given back."""

    delivery_id: int
    attempts: int
    endpoint_id: str
    url: str
    secret_sealed: str
    message_id: str
    payload: dict[str, Any]


class WebhookWorker:
    """Sends this replica's share of the deliveries, in the background, until cancelled."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        settings: Settings,
        mailer: Mailer,
        *,
        verify: ssl.SSLContext | bool | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.mailer = mailer
        #: Who holds the leases this worker takes.
        self.owner = new_uuid()
        self.verify = (
            verify if verify is not None else ssl.create_default_context(cafile=certifi.where())
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sending: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Work until stopped or cancelled; an error is logged and the loop goes on."""
        try:
            while not self._stopping:
                try:
                    found = await self.step()
                except Exception as error:  # the database may be away for a while
                    logger.error("webhook worker: {}: {}", type(error).__name__, error)
                    found = False
                if not found:
                    await self._pause()
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def stop(self, grace_seconds: float = 2.0) -> None:
        """Take no more work; give the attempts in flight ``grace_seconds`` to end
        (:meth:`run` cancels the rest: their leases end and another worker retries)."""
        self._stopping = True
        self.wake()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_seconds)

    async def _pause(self) -> None:
        """Wait for a poll period, an attempt to end, or a wake-up."""
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {waker, *self._in_flight},
                timeout=self.settings.WEBHOOK_POLL_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waker.cancel()
            self._wake.clear()

    async def step(self) -> bool:
        """Fan out, then claim and start what is due; whether anything was found."""
        if not await any_endpoint_enabled(self.session_factory):
            return False
        fanned = await fan_out(self.session_factory)
        free = CONCURRENT_DELIVERIES - len(self._in_flight)
        claimed: list[int] = []
        if free > 0:
            claimed = await claim_deliveries(self.session_factory, self.settings, self.owner, free)
        for delivery_id in claimed:
            if delivery_id in self._sending:
                continue  # its lease ran out while this worker still sends it
            self._sending.add(delivery_id)
            task = asyncio.create_task(self.attempt(delivery_id))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            task.add_done_callback(partial(self._sent, delivery_id))
        return bool(fanned or claimed)

    def _sent(self, delivery_id: int, _task: asyncio.Task[None]) -> None:
        self._sending.discard(delivery_id)

    async def drain(self) -> None:
        """Run steps until nothing is due or in flight (for tests and the CLI)."""
        while await self.step() or self._in_flight:
            if self._in_flight:
                await asyncio.wait(set(self._in_flight))

    async def _load(self, delivery_id: int) -> _Claimed | None:
        async with self.session_factory() as db:
            row = (
                await db.execute(
                    select(WebhookDelivery, WebhookEvent, WebhookEndpoint)
                    .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                    .where(
                        WebhookDelivery.id == delivery_id,
                        WebhookDelivery.lease_owner == self.owner,
                        # A whole attempt must end inside the lease, or another
                        # worker could claim the delivery while this one sends it.
                        WebhookDelivery.lease_until
                        >= now_epoch() + math.ceil(self.settings.WEBHOOK_TIMEOUT_SECONDS),
                    )
                )
            ).first()
        if row is None:
            return None
        delivery, event, endpoint = row
        return _Claimed(
            delivery.id,
            delivery.attempts,
            endpoint.id,
            endpoint.url,
            endpoint.secret_sealed,
            event.message_id,
            event.payload,
        )

    async def attempt(self, delivery_id: int) -> None:
        """Send one leased delivery and write down what came of it."""
        try:
            claimed = await self._load(delivery_id)
            if claimed is None:  # deleted meanwhile (its endpoint was removed)
                return
            body = payload_body(claimed.payload)
            try:
                secret = self.settings.secret_box.open(claimed.secret_sealed)
            except SealError:
                outcome = Outcome(
                    False,
                    None,
                    "not sent: the endpoint's secret cannot be opened with "
                    "DATA_ENCRYPTION_KEY (rotate the endpoint's secret)",
                )
            else:
                headers = {
                    **signed_headers(secret, claimed.message_id, body, datetime.now(UTC)),
                    "user-agent": f"{self.settings.PROJECT_NAME} webhooks",
                }
                outcome = await post_signed(
                    claimed.url,
                    body,
                    headers,
                    timeout_seconds=self.settings.WEBHOOK_TIMEOUT_SECONDS,
                    allow_private=self.settings.webhook_private_targets_allowed,
                    verify=self.verify,
                )
            await self._record(claimed, outcome)
        except Exception as error:  # the lease ends and another attempt follows
            logger.error(
                "webhook delivery {} failed: {}: {}", delivery_id, type(error).__name__, error
            )

    async def _record(self, claimed: _Claimed, outcome: Outcome) -> None:
        """Write the attempt's outcome (if the lease is still this worker's), and the
        endpoint's health; turn off an endpoint failing for too long."""
        settings = self.settings
        now = now_epoch()
        attempts = claimed.attempts + 1
        values: dict[str, Any] = {
            "attempts": WebhookDelivery.attempts + 1,
            "last_attempt_at": now,
            "last_status_code": outcome.status_code,
            "last_response": outcome.response,
            "lease_until": 0,
            "lease_owner": None,
        }
        if outcome.ok:
            values.update(status="delivered", delivered_at=now)
        elif attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
            values.update(status="failed")
        else:
            values.update(next_attempt_at=now + retry_delay_seconds(settings, attempts))
        disabled = False
        async with self.session_factory() as db:
            result = await db.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == claimed.delivery_id,
                    WebhookDelivery.lease_owner == self.owner,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if rows_matched(result) != 1:  # the lease ended and another worker has it
                await db.rollback()
                return
            endpoint = WebhookEndpoint.id == claimed.endpoint_id
            if outcome.ok:
                await db.execute(
                    update(WebhookEndpoint)
                    .where(endpoint, WebhookEndpoint.failing_since.is_not(None))
                    .values(failing_since=None)
                )
            else:
                # A streak goes on while failures follow each other at most a
                # retry's longest wait apart (with room for the worker's own delays).
                streak_broken = or_(
                    WebhookEndpoint.failing_since.is_(None),
                    WebhookEndpoint.last_failure_at < now - failure_streak_gap_seconds(settings),
                )
                await db.execute(
                    update(WebhookEndpoint)
                    .where(endpoint)
                    .values(
                        failing_since=case(
                            (streak_broken, now), else_=WebhookEndpoint.failing_since
                        ),
                        last_failure_at=now,
                    )
                )
                turned_off = await db.execute(
                    update(WebhookEndpoint)
                    .where(
                        endpoint,
                        WebhookEndpoint.enabled.is_(True),
                        WebhookEndpoint.failing_since
                        <= now - settings.WEBHOOK_DISABLE_AFTER_SECONDS,
                    )
                    .values(enabled=False, disabled_reason="failing", updated_at=now)
                )
                disabled = rows_matched(turned_off) == 1
            await db.commit()
        if outcome.ok:
            logger.info("webhook {} delivered to {}", claimed.message_id, claimed.endpoint_id)
        else:
            logger.warning(
                "webhook {} to {}: attempt {} failed ({})",
                claimed.message_id,
                claimed.endpoint_id,
                attempts,
                outcome.status_code or outcome.response,
            )
        if disabled:
            await self._tell_admins(claimed)

    async def _tell_admins(self, claimed: _Claimed) -> None:
        logger.warning("webhook endpoint {} turned off: failing too long", claimed.endpoint_id)
        async with self.session_factory() as db:
            admins = (
                await db.scalars(
                    select(User).where(
                        has_role("admin"), User.is_active.is_(True), User.email_verified.is_(True)
                    )
                )
            ).all()
        hours = self.settings.WEBHOOK_DISABLE_AFTER_SECONDS / 3600
        send_admin_notice(
            self.mailer,
            list(admins),
            what="A webhook endpoint was turned off",
            more=(
                f"Every delivery to {claimed.url} (endpoint {claimed.endpoint_id}) failed for "
                f"{hours:g} hours, so no more events are sent to it. Its delivery log "
                "says why; once the receiver works again, enable the endpoint: the "
                "deliveries still pending are sent then."
            ),
        )


# Retention ------------------------------------------------------------------------------


async def purge_old_deliveries(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> dict[str, int]:
    """Delete delivered and failed deliveries, and events with nothing left to send,
    older than WEBHOOK_RETENTION_DAYS. Pending ones stay, however old."""
    cutoff = now_epoch() - settings.WEBHOOK_RETENTION_DAYS * 86400
    async with session_factory() as db:
        deliveries = await db.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.status.in_(("delivered", "failed")),
                WebhookDelivery.created_at <= cutoff,
            )
        )
        still_sent = exists().where(WebhookDelivery.event_id == WebhookEvent.id)
        events = await db.execute(
            delete(WebhookEvent).where(WebhookEvent.created_at <= cutoff, ~still_sent)
        )
        await db.commit()
    return {"deliveries": rows_matched(deliveries), "events": rows_matched(events)}
