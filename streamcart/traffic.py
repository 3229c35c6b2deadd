"""Shoppers for a running stack: customers place, cancel and receive orders through the HTTP API, to watch live.

``streamcart traffic`` drives the saga the way a shop's users would, so the dashboard shows every path: most
orders are confirmed, then dispatched and delivered by an admin; some cards are declined or flaky; a few
customers cancel (before or after confirmation: a refund and a restock); a SKU running low is restocked. Each
order is one task that places it, long-polls it to its outcome and carries out what its :class:`Plan` says.
The requests go to every worker in turn, so some are forwarded to the worker that owns the order.

What an order does is drawn from a seeded random generator (:func:`plan`) when it starts, before any request:
a run with the same seed and catalog makes the same choices (what the stack then does with them may differ: a
cancel can race a payment).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from api.auth import issue_token
from streamcart.bench import BENCH_SKU_PREFIX
from streamcart.errors import StreamcartError
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.text import is_digits

#: (token, weight): what pays for an order. ``tok_funds_5000`` declines totals above 50.00.
CARDS: tuple[tuple[str, int], ...] = (
    ("tok_approve", 80), ("tok_decline", 6), ("tok_flaky_2", 6), ("tok_funds_5000", 8),
)
#: What happens once an order is confirmed: shipped to the door, cancelled by its customer, or left alone.
AFTER_CONFIRMATION: tuple[tuple[str, int], ...] = (("ship", 80), ("cancel", 10), ("keep", 10))
#: The share of orders whose customer cancels at once, while the saga is still on it.
CANCEL_AT_ONCE = 0.04
#: A SKU with fewer available units than this is restocked (by :data:`RESTOCK` units).
LOW_STOCK, RESTOCK = 5, 50
#: How long a long-poll may wait at a time (the API's limit), and how long a shopper waits for an outcome.
POLL_S, SETTLE_S = 30.0, 90.0
#: How many times a request goes to the next worker when one does not answer before it is given up.
UNANSWERED_TRIES = 5


def failed(step: str, status: int) -> str:
    """How a failed request is counted: ``place: HTTP 422``, or ``place: no answer`` when no worker answered."""
    return f"{step}: {'no answer' if status == 0 else f'HTTP {status}'}"


@dataclass(frozen=True)
class Plan:
    """One order: its lines, its card, whether it is cancelled at once, what follows its confirmation, and how
    long the admin takes to dispatch and then to deliver it."""

    customer: str
    lines: tuple[tuple[str, int], ...]
    token: str
    cancel_at_once: bool
    after: str  # "ship", "cancel" or "keep"
    ship_after_s: tuple[float, float] = (1.0, 1.0)


def _pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def plan(rng: random.Random, skus: Sequence[str], customers: int = 20) -> Plan:
    """What the next shopper does (deterministic for a seeded ``rng``)."""
    chosen = rng.sample(list(skus), k=min(len(skus), rng.choice((1, 1, 2, 2, 3))))
    return Plan(
        customer=f"c-shop-{rng.randrange(customers)}",
        lines=tuple((sku, rng.choice((1, 1, 1, 2))) for sku in chosen),
        token=_pick(rng, CARDS),
        cancel_at_once=rng.random() < CANCEL_AT_ONCE,
        after=_pick(rng, AFTER_CONFIRMATION),
        ship_after_s=(rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)),
    )


#: The statuses an order may show after each, as its customer reads it: forward only, and a confirmed order is
#: cancelled only at its customer's request (before dispatch).
_NEXT = {
    "PENDING": {"PENDING", "CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED"},
    "CONFIRMED": {"CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED"},
    "SHIPPED": {"SHIPPED", "DELIVERED"},
    "DELIVERED": {"DELIVERED"},
    "CANCELLED": {"CANCELLED"},
}


@dataclass
class Tally:
    """What the shoppers saw, order by order: the last status of each, why each cancelled one was, and each order
    that went back on what it had shown (an answer the stack took back: a read of a state that was then lost)."""

    placed: int = 0
    status: dict[str, str] = field(default_factory=dict)  # order id -> its last status seen
    reason: dict[str, str] = field(default_factory=dict)  # order id -> why it was cancelled
    errors: Counter[str] = field(default_factory=Counter)
    restocks: int = 0
    went_back: dict[str, str] = field(default_factory=dict)  # order id -> "CONFIRMED -> CANCELLED (timeout)"

    def saw(self, order_id: str, status: str, reason: str | None) -> None:
        """An answer of the API: ``order_id`` is ``status`` (cancelled for ``reason``)."""
        before = self.status.get(order_id)
        allowed = _NEXT.get(before, {status}) if before is not None else {status}
        if before == "CONFIRMED" and status == "CANCELLED" and reason != "customer_request":
            allowed = set()  # only its customer cancels a confirmed order
        if status not in allowed and order_id not in self.went_back:
            self.went_back[order_id] = f"{before} -> {status}" + (f" ({reason})" if reason else "")
        self.status[order_id] = status
        if status == "CANCELLED" and reason:
            self.reason[order_id] = reason

    @property
    def reasons(self) -> Counter[str]:
        return Counter(self.reason.values())

    def line(self) -> str:
        seen = Counter(self.status.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.reasons.items()))
        in_flight = seen.get("PENDING", 0)
        out = (f"placed {self.placed}: {seen.get('CONFIRMED', 0)} confirmed, {seen.get('SHIPPED', 0)} shipped, "
               f"{seen.get('DELIVERED', 0)} delivered, {seen.get('CANCELLED', 0)} cancelled"
               + (f" ({reasons})" if reasons else "") + f", {in_flight} in flight")
        if self.restocks:
            out += f"; {self.restocks} restocks"
        if self.went_back:
            out += f"; {len(self.went_back)} went back on what they had shown"
        if self.errors:
            out += "; errors: " + ", ".join(f"{e} {n}" for e, n in self.errors.most_common(3))
        return out


class Shoppers:
    """The customers and the admin of one run, talking to the workers' API."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, seed: int | None = None,
                 tally: Tally | None = None) -> None:
        self.session = session
        self.rng = random.Random(seed)
        self.tally = tally if tally is not None else Tally()
        self.urls = [settings.worker_url(i) for i in range(settings.workers)]
        self._turn = 0
        secret = settings.jwt_secret.get_secret_value()
        self._tokens: dict[str, str] = {}
        self._issue: Callable[[str, list[str]], str] = lambda sub, roles: issue_token(secret, sub, roles, ttl_s=86_400)
        self.admin = self._issue("shop-admin", ["admin"])
        self._restocking: set[str] = set()

    def _token(self, customer: str) -> str:
        if customer not in self._tokens:
            self._tokens[customer] = self._issue(customer, ["customer"])
        return self._tokens[customer]

    async def call(self, method: str, path: str, token: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request to the next worker in turn; a 503 (a rebalance) or a 429 is tried again after its
        Retry-After, and a worker that does not answer (down, or killed mid-request) is left for the next one, as a
        load balancer would: every request a shopper sends is safe to send again (a placement or a restock
        under its Idempotency-Key, a cancel, a shipment update). Status 0 when no worker answered
        :data:`UNANSWERED_TRIES` times, or the answer is not JSON."""
        status, answer = 0, None
        unanswered = 0
        index = self._turn
        self._turn += 1
        for _ in range(20):
            url = self.urls[index % len(self.urls)] + path
            index += 1  # the next try goes to the next worker, whatever other shoppers' requests do meanwhile
            try:
                async with self.session.request(method, url, json=body, headers={
                    "Authorization": f"Bearer {token}", **(headers or {})
                }) as response:
                    status, answer = response.status, await response.json(content_type=None)
                    retry_after = response.headers.get("Retry-After", "1")
            except (TimeoutError, aiohttp.ClientError) as exc:
                unanswered += 1
                if unanswered >= UNANSWERED_TRIES:
                    return 0, {"error": f"{method} {path}: {type(exc).__name__} {exc}"}
                await asyncio.sleep(0.2)
                continue
            except ValueError as exc:
                return 0, {"error": f"{method} {path}: {type(exc).__name__} {exc}"}
            if status not in (429, 503):
                return status, answer
            await asyncio.sleep(float(retry_after) if is_digits(retry_after.replace(".", "", 1)) else 1.0)
        return status, answer

    async def catalog(self) -> list[str]:
        """The active products of the catalog, every page of it (the demo's after `streamcart demo`)."""
        skus: list[str] = []
        cursor = ""
        while True:
            status, page = await self.call("GET", f"/v1/products?limit=500{cursor}", self.admin)
            if status != 200:
                raise StreamcartError(f"the catalog could not be read from {self.urls[0]}: "
                                      + (f"HTTP {status} {page}" if status else str(page["error"])))
            skus.extend(product["sku"] for product in page["items"] if product["active"])
            if not page.get("next_cursor"):
                break
            cursor = f"&cursor={page['next_cursor']}"
        if not skus:
            raise StreamcartError("no active product to sell: run `streamcart demo` (or add products) first")
        return skus

    async def shelves(self, asked: Sequence[str]) -> list[str]:
        """What to shop: ``asked``, each an active product, or every active product but the benchmarks' (they
        leave dozens, stocked by the million, which would crowd the demo's out of the dashboard)."""
        active = await self.catalog()
        if asked:
            if unknown := [sku for sku in asked if sku not in active]:
                raise StreamcartError(f"not an active product: {', '.join(unknown)} (`streamcart product show SKU`; "
                                      f"active: {', '.join(active[:10])}{' …' if len(active) > 10 else ''})")
            return list(asked)
        return [sku for sku in active if not sku.startswith(BENCH_SKU_PREFIX)] or active

    async def shop(self, skus: Sequence[str]) -> str:
        """One shopper, from placing an order to its last step; returns the order id. Whatever goes wrong is
        counted in the tally (a shopper never ends silently)."""
        p = plan(self.rng, skus)
        try:
            return await self._shop(p)
        except Exception as exc:  # reported, not raised: one shopper's failure is not the run's
            self.tally.errors[type(exc).__name__] += 1
            return ""

    async def _shop(self, p: Plan) -> str:
        token = self._token(p.customer)
        body = {"lines": [{"sku": s, "quantity": q} for s, q in p.lines], "payment": {"token": p.token},
                "currency": "EUR"}
        status, placed = await self.call("POST", "/v1/orders", token, body, {"Idempotency-Key": new_id()})
        if status != 202:
            self.tally.errors[failed("place", status)] += 1
            return ""
        order_id = str(placed["order_id"])
        self.tally.placed += 1
        self.tally.status[order_id] = "PENDING"
        if p.cancel_at_once and await self._cancel(order_id, token):
            await self._until(order_id, token, lambda o: o["status"] == "CANCELLED")
            return order_id
        order = await self._settled(order_id, token)
        if order is None:
            return order_id
        await self._restock_low(order)  # what it took, or what it found missing (out_of_stock)
        if order["status"] == "CONFIRMED":
            if p.after == "cancel" and await self._cancel(order_id, token):  # refunded and restocked
                await self._until(order_id, token, lambda o: o["status"] == "CANCELLED")
            elif p.after == "ship":
                for step, delay in zip(("dispatched", "delivered"), p.ship_after_s, strict=True):
                    await asyncio.sleep(delay)
                    await self._ship(order_id, step)
                await self._until(order_id, token, lambda o: o["status"] in ("DELIVERED", "CANCELLED"))
        return order_id

    async def _cancel(self, order_id: str, token: str) -> bool:
        """The customer's cancel; ``True`` once accepted. An order just placed is not stored yet (404) for a
        moment; a refusal (409: it settled another way) is the answer, not an error."""
        for _ in range(20):
            status, _ = await self.call("POST", f"/v1/orders/{order_id}/cancel", token,
                                        {"reason": "customer_request"})
            if status == 202:
                return True
            if status == 409:
                return False
            if status != 404:
                break
            await asyncio.sleep(0.25)
        self.tally.errors[failed("cancel", status)] += 1
        return False

    async def _ship(self, order_id: str, step: str) -> None:
        """The admin's shipment update; the shipment is created just after the confirmation, so a 409 (none yet)
        is tried again for up to a minute (a worker killed in a drill takes some 15 s to take its work up again)."""
        for _ in range(120):
            status, _ = await self.call("POST", f"/v1/shipments/{order_id}/status", self.admin, {"status": step})
            if status == 202:
                return
            if status != 409:
                break
            await asyncio.sleep(0.5)
        self.tally.errors[failed(step, status)] += 1

    async def _settled(self, order_id: str, token: str) -> dict[str, Any] | None:
        """The order once CONFIRMED or CANCELLED (long-polled), else ``None`` after :data:`SETTLE_S`."""
        return await self._until(order_id, token, lambda o: o["status"] != "PENDING")

    async def _until(self, order_id: str, token: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The order once ``done``. The API's long-poll waits while it is PENDING; after that this reads it every
        half second."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            status, order = await self.call("GET", f"/v1/orders/{order_id}?wait={POLL_S:g}", token)
            if status == 200:
                self.tally.saw(order_id, order["status"], order["cancel_reason"])
                if done(order):
                    return dict(order)
            await asyncio.sleep(0.5)  # a 404 right after placing, or a long-poll that returned as it was
        self.tally.errors["not settled in time"] += 1
        return None

    async def _restock_low(self, order: dict[str, Any]) -> None:
        for line in order["lines"]:
            sku = line["sku"]
            if sku in self._restocking:  # another shopper is on it
                continue
            self._restocking.add(sku)
            try:
                status, stock = await self.call("GET", f"/v1/stock/{sku}", self.admin)
                if status != 200 or stock["available"] >= LOW_STOCK:
                    continue
                status, _ = await self.call("POST", f"/v1/stock/{sku}/adjustments", self.admin,
                                            {"delta": RESTOCK, "reason": "restock"}, {"Idempotency-Key": new_id()})
                if status in (200, 202):
                    self.tally.restocks += 1
                else:
                    self.tally.errors[failed("restock", status)] += 1
            finally:
                self._restocking.discard(sku)


async def run(
    settings: Settings, *, rate: float, orders: int | None = None, seconds: float | None = None,
    seed: int | None = None, echo: Callable[[str], None] = print, every_s: float = 5.0, tally: Tally | None = None,
    skus: Sequence[str] = (), stop: asyncio.Event | None = None,
) -> Tally:
    """Start a shopper every ``1/rate`` seconds until ``orders`` were placed, ``seconds`` passed or ``stop`` is set
    (or forever), then wait for every shopper to finish; ``echo`` gets a progress line every ``every_s``. ``tally``
    (filled as the run goes) is what a caller interrupted with Ctrl-C can still report. ``skus`` limits the
    shopping to those (default: every active product)."""
    timeout = aiohttp.ClientTimeout(total=POLL_S + 15)
    # The system's resolver, not aiohttp's default (c-ares, once aiodns is installed for the webhooks): c-ares keeps an
    # answer for its TTL (Docker's DNS gives 600 s), so a worker back at a new address would be called at its old one
    # until then.
    connector = aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver())
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        shoppers = Shoppers(settings, session, seed, tally)
        skus = await shoppers.shelves(skus)
        shown = ", ".join(skus[:6]) + (f" and {len(skus) - 6} more" if len(skus) > 6 else "")
        echo(f"shopping {shown} at {rate:g} orders/s" + (f" for {orders} orders" if orders else "")
             + (f" for {seconds:g} s" if seconds else "") + " (Ctrl-C stops)")
        tasks: set[asyncio.Task[str]] = set()

        async def report() -> None:
            while True:
                await asyncio.sleep(every_s)
                echo(shoppers.tally.line())

        reporter = asyncio.create_task(report())
        started = time.monotonic()
        n = 0
        try:
            stopped = stop or asyncio.Event()
            while ((orders is None or n < orders) and (seconds is None or time.monotonic() - started < seconds)
                   and not stopped.is_set()):
                task = asyncio.create_task(shoppers.shop(skus))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                with contextlib.suppress(TimeoutError):  # the next shopper's time, or a stop before it
                    await asyncio.wait_for(stopped.wait(), max(0.0, started + n / rate - time.monotonic()))
            if tasks:
                await asyncio.wait(set(tasks))
        finally:
            reporter.cancel()
            for task in tasks:
                task.cancel()
        return shoppers.tally
