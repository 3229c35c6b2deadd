"""The saga in memory: the pure deciders wired together by a little message bus that delivers at least once.

The bus keeps one FIFO queue per (flow, topic, key), as Kafka keeps order per partition, and delivers from a random
queue each step, so messages of different keys and topics interleave in any order. It also misbehaves the way
DESIGN.md §3 says the real thing does: a message is delivered again right after it was processed (the offset was
not committed), a flow "crashes" after storing its state but before sending (the message comes again and its
outputs must be re-emitted), and stragglers (copies of sent messages) arrive much later. A fake payment gateway
keeps the ledger that I4 is checked against.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import Message, OrderEvent
from streamcart.domain import catalog, inventory, notifications, orders, payments, shipping
from streamcart.domain.decision import Decision
from streamcart.domain.orders import OrderState, OrderStatus
from streamcart.domain.payments import GatewayCall, GatewayResult
from streamcart.domain.timeouts import due

TIMEOUT_MS = 30_000

#: Which flows consume which topic (each flow is its own consumer group).
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "order_commands": ("orders",),
    "catalog_commands": ("catalog",),
    "inventory_commands": ("inventory",),
    "payment_commands": ("payments",),
    "shipping_commands": ("shipping",),
    "order_events": ("shipping", "notifications"),
    "inventory_events": ("orders",),
    "payment_events": ("orders",),
    "shipping_events": ("orders",),
    "notification_events": (),
}

#: I1: where an order may go from each status.
ALLOWED_MOVES = {
    OrderStatus.PENDING: OrderStatus.SETTLED | {OrderStatus.PENDING},
    OrderStatus.CONFIRMED: {OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED},
    OrderStatus.SHIPPED: {OrderStatus.SHIPPED, OrderStatus.DELIVERED},
    OrderStatus.DELIVERED: {OrderStatus.DELIVERED},
    OrderStatus.CANCELLED: {OrderStatus.CANCELLED},
}


@dataclass
class Authorization:
    key: str
    authorization_id: str
    amount_cents: int
    status: str  # approved | declined | captured | voided | refunded


@dataclass
class FakeGateway:
    """The card processor of DESIGN.md §6, in memory: idempotent by key, the token decides.

    ``tok_approve`` approves, ``tok_decline`` declines, ``tok_lost`` approves but the first answer never reaches
    the client (it sees ``unavailable``, the gateway holds an approval).
    """

    ledger: dict[str, Authorization] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    calls: int = 0

    def perform(self, call: GatewayCall) -> GatewayResult:
        self.calls += 1
        if call.operation == "authorize" or call.authorization_id is None:
            auth = self._authorize(call)
            if call.operation == "authorize":
                if call.payment_token == "tok_lost" and call.idempotency_key not in self.lost:
                    self.lost.add(call.idempotency_key)
                    return GatewayResult.unavailable()
                if auth.status == "declined":
                    return GatewayResult.declined("card_declined")
                return GatewayResult.approved(auth.authorization_id)
        else:
            auth = next(a for a in self.ledger.values() if a.authorization_id == call.authorization_id)
        allowed, target = {
            "capture": ({"approved"}, "captured"),
            "void": ({"approved"}, "voided"),
            "refund": ({"approved", "captured"}, "refunded"),
        }[call.operation]
        if auth.status == target:
            return GatewayResult.approved(auth.authorization_id)
        if auth.status not in allowed:
            return GatewayResult.declined(f"cannot {call.operation} a {auth.status} authorization")
        auth.status = target
        return GatewayResult.approved(auth.authorization_id)

    def _authorize(self, call: GatewayCall) -> Authorization:
        known = self.ledger.get(call.idempotency_key)
        if known is None:
            status = "declined" if call.payment_token == "tok_decline" else "approved"
            known = Authorization(call.idempotency_key, f"auth-{call.idempotency_key}", call.amount_cents, status)
            self.ledger[call.idempotency_key] = known
        return known


@dataclass
class Saga:
    """Every flow's table, the bus between them, and the record the invariants are checked against."""

    seed: int
    redeliver: float = 0.08
    crash: float = 0.05
    straggle: float = 0.03
    rng: random.Random = field(init=False)
    gateway: FakeGateway = field(default_factory=FakeGateway)
    tables: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    queues: dict[tuple[str, str, str], deque[Message]] = field(default_factory=dict)
    stragglers: list[tuple[str, Message]] = field(default_factory=list)
    paused: set[str] = field(default_factory=set)
    emitted: dict[str, Message] = field(default_factory=dict)
    delivered: dict[tuple[str, str], Message] = field(default_factory=dict)
    rejections: list[tuple[str, Message, str]] = field(default_factory=list)
    notified: set[str] = field(default_factory=set)
    clock: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- the bus ---------------------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Publish ``message`` to every flow subscribed to its topic."""
        known = self.emitted.setdefault(message.event_id, message)
        assert known == message, f"event id {message.event_id} was emitted with two contents"
        for flow in SUBSCRIPTIONS[message.TOPIC]:
            self._enqueue(flow, message)
            if self.rng.random() < self.straggle:
                self.stragglers.append((flow, message))

    def _enqueue(self, flow: str, message: Message, *, front: bool = False) -> None:
        queue = self.queues.setdefault((flow, message.TOPIC, message.key), deque())
        queue.appendleft(message) if front else queue.append(message)

    def run(self, max_steps: int = 200_000) -> None:
        """Deliver until nothing is left to deliver (paused flows keep their queues)."""
        for _ in range(max_steps):
            self.queues = {k: q for k, q in self.queues.items() if q}  # drop drained queues, keep order
            ready = [(flow, q) for (flow, _, _), q in self.queues.items() if flow not in self.paused]
            if self.stragglers and (not ready or self.rng.random() < 0.05):
                flow, message = self.stragglers.pop(self.rng.randrange(len(self.stragglers)))
                self._enqueue(flow, message)
                continue
            if not ready:
                return
            self._deliver(*self.rng.choice(ready))
        raise AssertionError("the saga did not settle")

    def _deliver(self, flow: str, queue: deque[Message]) -> None:
        message = queue.popleft()
        self.delivered.setdefault((flow, message.event_id), message)
        decision = HANDLERS[flow](self, message)
        if decision.rejected is not None:
            assert decision.messages == ()
            self.rejections.append((flow, message, decision.rejected))
            if decision.state is not None:  # a refusal noted in the state (a cancel after dispatch), as the flow does
                self._check_move(self.orders.get(message.key), decision.state)
                self._store(flow, message, decision.state)
            return
        if decision.state is not None:
            if flow == "orders":
                self._check_move(self.orders.get(message.key), decision.state)
            self._store(flow, message, decision.state)
        if self.rng.random() < self.crash:
            queue.appendleft(message)  # stored, then killed before sending: the message comes again
            return
        for out in decision.messages:
            self.send(out)
        if self.rng.random() < self.redeliver:
            queue.appendleft(message)  # sent, but the offset was not committed

    def _store(self, flow: str, message: Message, state: Any) -> None:
        if isinstance(state, inventory.StockChange):
            # As the inventory agent would: the counters under the SKU, the reservation under its own key.
            self.tables["inventory"][state.stock.sku] = state.stock
            if state.reservation is not None:
                key = inventory.reservation_key(state.reservation.sku, state.reservation.order_id)
                self.tables["reservations"][key] = state.reservation
            if state.adjustments is not None:
                self.tables["adjustments"][inventory.adjustments_key(state.adjustments.sku)] = state.adjustments
        else:
            self.tables[flow][message.key] = state

    def _unchanged(self, flow: str, message: Message, state: Any) -> bool:
        if isinstance(state, inventory.StockChange):
            reservation = state.reservation
            return self.tables["inventory"][state.stock.sku] == state.stock and (
                reservation is None
                or self.tables["reservations"][inventory.reservation_key(reservation.sku, reservation.order_id)]
                == reservation
            )
        return bool(self.tables[flow][message.key] == state)

    @staticmethod
    def _check_move(before: OrderState | None, after: OrderState) -> None:
        if before is not None:
            assert after.status in ALLOWED_MOVES[before.status], f"{before.status} -> {after.status}"
        if after.status == OrderStatus.CANCELLED:
            assert after.cancel_reason

    def tick(self, now_ms: int) -> None:
        """A timer tick: emit ExpireOrder for what is overdue (twice, as two workers might during a rebalance)."""
        for _ in range(2):
            for command in due(self.tables["orders"].values(), now_ms):
                self.send(command)

    # --- I5: everything again --------------------------------------------------------------------------------

    def replay_everything(self) -> None:
        """Deliver every message once more to every flow that had it: nothing may change or be new."""
        rejected_before = {(flow, m.event_id) for flow, m, _ in self.rejections}
        calls = self.gateway.calls
        for (flow, event_id), message in self.delivered.items():
            decision = HANDLERS[flow](self, message)
            if decision.rejected is not None:
                assert (flow, event_id) in rejected_before, (flow, message, decision.rejected)
                continue
            assert decision.state is None or self._unchanged(flow, message, decision.state), (flow, message)
            for out in decision.messages:
                assert self.emitted.get(out.event_id) == out, (flow, message, out)
        assert self.gateway.calls == calls, "a replay called the payment gateway"

    # --- views -----------------------------------------------------------------------------------------------

    @property
    def orders(self) -> dict[str, OrderState]:
        return self.tables["orders"]

    def stock(self, sku: str) -> inventory.StockState:
        return self.tables["inventory"][sku]

    def reservations(self, sku: str) -> list[inventory.Reservation]:
        return [res for res in self.tables["reservations"].values() if res.sku == sku]


def _orders(saga: Saga, message: Message) -> Decision[Any]:
    return orders.decide(saga.orders.get(message.key), message, saga_timeout_ms=TIMEOUT_MS)


def _catalog(saga: Saga, message: Message) -> Decision[Any]:
    return catalog.decide(saga.tables["catalog"].get(message.key), message)


def _inventory(saga: Saga, message: Message) -> Decision[Any]:
    sku = message.key
    order_id = getattr(message, "order_id", None)
    reservation = saga.tables["reservations"].get(inventory.reservation_key(sku, order_id)) if order_id else None
    return inventory.decide(saga.tables["inventory"].get(sku), reservation, message,
                            product=saga.tables["catalog"].get(sku),
                            adjustments=saga.tables["adjustments"].get(inventory.adjustments_key(sku)))


def _payments(saga: Saga, message: Message) -> Decision[Any]:
    state = saga.tables["payments"].get(message.key)
    planned = payments.plan(state, message)
    if isinstance(planned, GatewayCall):
        return payments.apply_result(state, message, saga.gateway.perform(planned))  # type: ignore[arg-type]
    return planned


def _shipping(saga: Saga, message: Message) -> Decision[Any]:
    return shipping.decide(saga.tables["shipping"].get(message.key), message)


def _notifications(saga: Saga, message: Message) -> Decision[Any]:
    assert isinstance(message, OrderEvent)
    planned = notifications.plan(message, notifications.Contact(email=f"{message.customer_id}@example.com"))
    saga.notified.update(n.idempotency_key for n in planned)
    return Decision(state=None, messages=tuple(notifications.sent(n, attempts=1) for n in planned))


HANDLERS: dict[str, Callable[[Saga, Message], Decision[Any]]] = {
    "orders": _orders,
    "catalog": _catalog,
    "inventory": _inventory,
    "payments": _payments,
    "shipping": _shipping,
    "notifications": _notifications,
}
