"""``streamcart audit``: DESIGN.md §4's invariants checked on a running stack, from three sources that do not share
state: the warehouse (what the orders flow recorded, through Kafka Connect), the inventory's stock counters (the
API) and the payment gateway's own ledger.

The tests check the invariants on the orders they place; this checks them on everything a stack holds, after a
demo, ``streamcart traffic`` with processes killed along the way, or a benchmark. The invariants hold once nothing
is in flight, so the audit first waits for a quiet moment (:func:`quiet`): the workers and the warehouse sinks have
consumed every record, and no order is still within its deadline. It then reads a :class:`Snapshot` and reads the
offsets again: a record written meanwhile makes it read again.

The checks (:func:`check`) are pure functions of the snapshot:

- I1: every order settled (an order still unsettled past its deadline and a grace is stuck), a cancelled one with
  its reason, and its lines where its outcome leaves them (none still reserved, a confirmed order's all sold); in
  the history of the latest orders (``sample``), placed once, confirmed and cancelled at most once each;
- I2 and I3, per SKU: nothing reserved once quiet; the inventory's sold and restocked units equal the warehouse's
  stock movements; ``on_hand = adjusted - sold + restocked``; ``0 <= available <= on_hand``; the units of the
  orders that kept their goods are what was sold less what came back, and never more than was supplied;
- I4: a confirmed order's payment captured for its total; a cancelled order's declined, voided or refunded; at the
  gateway (when it lists its authorizations, as the stack's gateway does), one captured authorization per confirmed
  order for its total, and nothing else held for a cancelled one;
- I6: for every revenue window (one minute, per currency) the analytics still keep, revenue on time plus what
  late confirmations would have added equals the warehouse's confirmed orders of that minute of event time, in
  cents and in orders (stack-wide: not with ``--sku``, revenue is not kept per SKU); a confirmation timed more than
  15 minutes after it was written to Kafka (a clock that ran ahead: the analytics count it when it was written) is a
  finding of its own that names both minutes, and its amount is compared in the analytics' minute;
- I7: the latest orders (``sample``) as the API shows them equal their warehouse rows;
- I8: every dead letter (since ``--since``; the workers' and the warehouse sinks') names the topic, partition and
  offset it came from, on one of the stack's topics, and its error.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from streamcart.dead_letters import ConnectHeader, DeadLetter, DlqHeader, SinkLetter
from streamcart.domain.analytics import MAX_AHEAD_MS, MINUTE_MS
from streamcart.domain.order_state import LineStatus, OrderStatus
from streamcart.domain.retention import FINAL
from streamcart.domain.warehouse import iso_utc
from streamcart.errors import StreamcartError
from streamcart.settings import Settings

#: How long after its deadline an unsettled order counts as stuck: the timer's tick and a loaded machine.
GRACE_S = 30.0
#: A settled payment's statuses, by outcome (the gateway's ledger says the same of its authorizations).
KEPT_MONEY = frozenset({"captured"})
NO_MONEY = frozenset({"declined", "voided", "refunded"})
#: An order that kept its goods and its money.
KEPT = frozenset({OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED})
#: Columns of the warehouse's ``orders`` row and where the API's order has them (times in epoch ms in both).
ORDER_COLUMNS: dict[str, Callable[[Mapping[str, Any]], object]] = {
    "customer_id": lambda o: o["customer_id"],
    "status": lambda o: o["status"],
    "currency": lambda o: o["currency"],
    "total_cents": lambda o: o["total_cents"],
    "cancel_reason": lambda o: o["cancel_reason"],
    "cancel_detail": lambda o: o["cancel_detail"],
    "payment_status": lambda o: (o["payment"] or {}).get("status"),
    "payment_amount_cents": lambda o: (o["payment"] or {}).get("amount_cents"),
    "authorization_id": lambda o: (o["payment"] or {}).get("authorization_id"),
    "decline_reason": lambda o: (o["payment"] or {}).get("decline_reason"),
    "tracking_id": lambda o: (o["shipment"] or {}).get("tracking_id"),
    "shipment_status": lambda o: (o["shipment"] or {}).get("status"),
    "carrier": lambda o: (o["shipment"] or {}).get("carrier"),
    "placed_at": lambda o: o["placed_at"],
    "deadline_at": lambda o: o["deadline"],
}
TIME_COLUMNS = frozenset({"placed_at", "deadline_at"})


class AuditUnavailable(StreamcartError):
    """The audit could not run: a part of the stack does not answer, or the stack never went quiet."""


@dataclass(frozen=True)
class Stock:
    """A SKU's counters as the inventory keeps them (``GET /v1/stock/{sku}``)."""

    on_hand: int = 0
    reserved: int = 0
    adjusted: int = 0
    sold: int = 0
    restocked: int = 0


@dataclass(frozen=True)
class Movements:
    """A SKU's stock movements in the warehouse, summed: units sold, units restocked, and units still reserved."""

    committed: int = 0
    restocked: int = 0
    reserved: int = 0


@dataclass
class Snapshot:
    """What the audit reads, at one quiet moment. ``orders`` are the warehouse's rows (``deadline_at`` and
    ``updated_at`` in epoch ms), ``lines`` its order lines, ``payments`` its payment rows; ``ledger`` is ``None``
    when the gateway lists no authorizations; ``api_orders`` maps the sampled order ids to the API's answer
    (``None``: 404)."""

    now_ms: int
    orders: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    movements: dict[str, Movements] = field(default_factory=dict)
    stock: dict[str, Stock] = field(default_factory=dict)
    ledger: list[dict[str, Any]] | None = None
    api_orders: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    warehouse_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    warehouse_lines: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    #: The API's answer for each order the caller expected (accepted by the API) that the warehouse does not hold.
    unrecorded: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: The deadlines (epoch ms) of unsettled orders placed before ``--since`` with a line of an audited SKU: while
    #: one is in flight, that SKU's stock is not quiet either.
    earlier_unsettled: list[int] = field(default_factory=list)
    #: Per SKU, the units of every order (placed in the audit's window or not) that kept its goods.
    kept_units: dict[str, int] = field(default_factory=dict)
    retention_ms: int = 0
    #: I6, per (revenue window start, currency): the analytics' (cents, orders) on time and late, and the
    #: warehouse's confirmed (cents, orders), for the windows from ``revenue_from``; ``revenue`` is ``None`` when
    #: I6 was not checked, ``revenue_skipped`` says why.
    revenue: dict[tuple[int, str], tuple[int, int, int, int]] | None = None
    confirmed: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    #: I6: the confirmations (from ``revenue_from``) timed more than :data:`MAX_AHEAD_MS` after they were written to
    #: Kafka (their authorization's record time): a clock that ran ahead. The analytics count each at when it was
    #: written (streamcart.domain.analytics.event_time), the warehouse at its own time. By order id.
    ahead: dict[str, Ahead] = field(default_factory=dict)
    revenue_from: int = 0
    revenue_skipped: str = "not read"
    #: I8: the dead letters (the workers' and the sinks'), and the names of the stack's topics.
    dead_letters: list[DeadLetter] = field(default_factory=list)
    topics: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Ahead:
    """A confirmation timed by a clock that ran ahead: its time, when it was written to Kafka, its amount."""

    confirmed_at: int
    recorded_at: int
    currency: str
    total_cents: int


@dataclass(frozen=True)
class Finding:
    invariant: str
    subject: str
    problem: str


@dataclass(frozen=True)
class Report:
    """The findings, and what each invariant was checked over (for the summary)."""

    findings: tuple[Finding, ...]
    checked: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_invariant(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = {name: [] for name in self.checked}
        for finding in self.findings:
            grouped.setdefault(finding.invariant, []).append(finding)
        return grouped


#: Each invariant the audit checks, as the report names it.
INVARIANTS = {
    "I1": "every order settled, once",
    "I2": "stock conserved per SKU",
    "I3": "no oversell",
    "I4": "money nets out",
    "I6": "revenue equals the confirmed totals",
    "I7": "warehouse equals the API",
    "I8": "dead letters name their source and error",
}


def check(snapshot: Snapshot, *, grace_s: float = GRACE_S) -> Report:
    """Every invariant over ``snapshot``."""
    findings = [
        *_settled(snapshot, grace_s),
        *_one_outcome(snapshot),
        *_unrecorded(snapshot),
        *_stock(snapshot),
        *_money(snapshot),
        *_revenue(snapshot),
        *_warehouse_equals_api(snapshot),
        *_dead_letters(snapshot),
    ]
    statuses = Counter(o["status"] for o in snapshot.orders)
    kept = sum(statuses[s] for s in KEPT)
    # The orders the API still knows: the others (forgotten a retention after they settled) have no history to read
    # and nothing to compare, and are not counted as read or compared.
    known = sum(1 for api in snapshot.api_orders.values() if api is not None)
    forgotten = len(snapshot.api_orders) - known
    audited = set(snapshot.warehouse_rows)
    ledger = ("" if snapshot.ledger is None else ", against the gateway's ledger "
              f"({sum(1 for a in snapshot.ledger if a['idempotency_key'] in audited)} of its authorizations)")
    checked = {
        "I1": f"{len(snapshot.orders)} orders" + (f" ({len(snapshot.unrecorded)} accepted ones missing)"
                                                  if snapshot.unrecorded else "")
              + f": {kept} confirmed, shipped or delivered, "
              f"{statuses[OrderStatus.CANCELLED]} cancelled; the histories of {known}",
        "I2": _skus(len(snapshot.stock)),
        "I3": _skus(len(snapshot.stock)),
        "I4": f"{sum(1 for o in snapshot.orders if o['payment_status'])} payments in the warehouse{ledger}"
              + ("" if snapshot.ledger is not None else " (the gateway lists no authorizations)"),
        "I6": _revenue_checked(snapshot),
        "I7": f"{known} orders" + (f"; {forgotten} more forgotten by the workers, kept by the warehouse alone"
                                   if forgotten else ""),
        "I8": _letters_checked(snapshot),
    }
    return Report(tuple(findings), checked)


def _skus(count: int) -> str:
    return f"{count} SKU{'' if count == 1 else 's'}"


def _settled(snapshot: Snapshot, grace_s: float) -> Iterable[Finding]:
    lines: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in snapshot.lines:
        lines[line["order_id"]].append(line)
    for order in snapshot.orders:
        order_id, status = order["order_id"], order["status"]
        if status not in OrderStatus.SETTLED:
            late_s = (snapshot.now_ms - order["deadline_at"]) / 1000
            if late_s > grace_s:
                yield Finding("I1", order_id, f"{status} {late_s:.0f} s after its deadline")
            continue
        if status == OrderStatus.CANCELLED and not order["cancel_reason"]:
            yield Finding("I1", order_id, "CANCELLED without a reason")
        for line in lines.get(order_id, ()):
            where = line["status"]
            if status in KEPT and where != LineStatus.COMMITTED:
                yield Finding("I1", order_id, f"{status}, but its line of {line['sku']} is {where}, not committed")
            elif status == OrderStatus.CANCELLED and where in (LineStatus.RESERVED, LineStatus.COMMITTED):
                yield Finding("I1", order_id, f"CANCELLED, but its line of {line['sku']} is still {where}")


def _unrecorded(snapshot: Snapshot) -> Iterable[Finding]:
    """An order the API accepted is somewhere: in the warehouse (I1: nothing lost), and the API's view of one the
    warehouse lacks is a row the sinks never wrote (I7)."""
    for order_id, api in sorted(snapshot.unrecorded.items()):
        if api is None:
            yield Finding("I1", order_id, "accepted by the API, but neither the warehouse nor the API knows it")
        else:
            yield Finding("I7", order_id, f"{api['status']} in the API, not in the warehouse")


def _one_outcome(snapshot: Snapshot) -> Iterable[Finding]:
    """I1 in the history of each sampled order: placed once, confirmed at most once, cancelled at most once (a
    refund cancels a confirmed order), and an outcome that is its status's."""
    for order_id, api in snapshot.api_orders.items():
        if api is None:
            continue
        events = Counter(step["event"] for step in api["history"])
        status = api["status"]
        if events["OrderPlaced"] != 1 or events["OrderConfirmed"] > 1 or events["OrderCancelled"] > 1:
            counts = {e: events[e] for e in ("OrderPlaced", "OrderConfirmed", "OrderCancelled")}
            yield Finding("I1", order_id, f"its history has {counts}")
        elif status in KEPT and (not events["OrderConfirmed"] or events["OrderCancelled"]):
            yield Finding("I1", order_id, f"{status}, but its history has {dict(events)}")
        elif status == OrderStatus.CANCELLED and not events["OrderCancelled"]:
            yield Finding("I1", order_id, f"CANCELLED, but its history has no OrderCancelled: {dict(events)}")


def _stock(snapshot: Snapshot) -> Iterable[Finding]:
    for sku, stock in sorted(snapshot.stock.items()):
        moved = snapshot.movements.get(sku, Movements())
        kept = snapshot.kept_units.get(sku, 0)
        if stock.reserved != 0:
            yield Finding("I2", sku, f"{stock.reserved} units reserved with no order in flight")
        if moved.reserved != stock.reserved:
            yield Finding("I2", sku, f"the warehouse's movements leave {moved.reserved} units reserved, "
                                     f"the inventory {stock.reserved}")
        if (moved.committed, moved.restocked) != (stock.sold, stock.restocked):
            yield Finding("I2", sku, f"the inventory sold {stock.sold} and restocked {stock.restocked} units, the "
                                     f"warehouse's movements {moved.committed} and {moved.restocked}")
        if stock.on_hand != stock.adjusted - stock.sold + stock.restocked:
            yield Finding("I2", sku, f"on hand {stock.on_hand}, but adjusted {stock.adjusted} - sold {stock.sold} "
                                     f"+ restocked {stock.restocked} = "
                                     f"{stock.adjusted - stock.sold + stock.restocked}")
        if not 0 <= stock.on_hand - stock.reserved <= stock.on_hand:
            yield Finding("I2", sku, f"available {stock.on_hand - stock.reserved} outside [0, on hand "
                                     f"{stock.on_hand}]")
        if kept != stock.sold - stock.restocked:
            yield Finding("I3", sku, f"orders that kept their goods hold {kept} units, but "
                                     f"{stock.sold} were sold and {stock.restocked} restocked")
        if stock.sold - stock.restocked > stock.adjusted:
            yield Finding("I3", sku, f"{stock.sold - stock.restocked} units kept by orders, only {stock.adjusted} "
                                     "supplied")


def _money(snapshot: Snapshot) -> Iterable[Finding]:
    events: defaultdict[str, Counter[str]] = defaultdict(Counter)
    amounts: defaultdict[str, set[int]] = defaultdict(set)
    for row in snapshot.payments:
        events[row["order_id"]][row["event"]] += 1
        if row["event"] in ("authorized", "captured"):
            amounts[row["order_id"]].add(row["amount_cents"])
    ledger: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for auth in snapshot.ledger or ():
        ledger[auth["idempotency_key"]].append(auth)
    for order in snapshot.orders:
        order_id, status, payment = order["order_id"], order["status"], order["payment_status"]
        if status in KEPT:
            if payment not in KEPT_MONEY:
                yield Finding("I4", order_id, f"{status} with its payment {payment}, not captured")
            if events[order_id]["captured"] != 1 or amounts[order_id] != {order["total_cents"]}:
                yield Finding("I4", order_id, f"{status} for {order['total_cents']}, payment rows "
                                              f"{dict(events[order_id])} for {sorted(amounts[order_id])}")
        elif status == OrderStatus.CANCELLED and payment is not None and payment not in NO_MONEY:
            yield Finding("I4", order_id, f"CANCELLED with its payment {payment}")
        if snapshot.ledger is None or status not in OrderStatus.SETTLED:
            continue
        auths = ledger.get(order_id, [])
        if status in KEPT:
            if len(auths) != 1:
                yield Finding("I4", order_id, f"{status} with {len(auths)} authorizations at the gateway")
            elif (auths[0]["status"], auths[0]["amount_cents"]) != ("captured", order["total_cents"]):
                yield Finding("I4", order_id, f"{status} for {order['total_cents']}, the gateway has "
                                              f"{auths[0]['status']} for {auths[0]['amount_cents']}")
            elif auths[0]["authorization_id"] != order["authorization_id"]:
                yield Finding("I4", order_id, f"names authorization {order['authorization_id']}, the gateway "
                                              f"{auths[0]['authorization_id']}")
        else:
            for auth in auths:
                if auth["status"] not in NO_MONEY:
                    yield Finding("I4", order_id, f"CANCELLED, the gateway holds {auth['amount_cents']} "
                                                  f"({auth['status']}, {auth['authorization_id']})")


def _revenue(snapshot: Snapshot) -> Iterable[Finding]:
    """I6, window by window: revenue on time plus late equals the confirmed orders' totals of its minute. A
    confirmation timed by a clock that ran ahead is one finding of its own, naming both minutes; its amount is
    compared in the minute the analytics count it in (when it was written to Kafka)."""
    if snapshot.revenue is None:
        return
    confirmed_by_minute = dict(snapshot.confirmed)

    def move(start: int, currency: str, cents: int, orders: int) -> None:
        if start >= snapshot.revenue_from:  # (the warehouse was read, and the analytics asked, from there)
            was_cents, was_orders = confirmed_by_minute.get((start, currency), (0, 0))
            confirmed_by_minute[(start, currency)] = (was_cents + cents, was_orders + orders)

    for order_id, ahead in sorted(snapshot.ahead.items()):
        said, written = ahead.confirmed_at // MINUTE_MS * MINUTE_MS, ahead.recorded_at // MINUTE_MS * MINUTE_MS
        move(said, ahead.currency, -ahead.total_cents, -1)
        move(written, ahead.currency, ahead.total_cents, 1)
        ahead_s = (ahead.confirmed_at - ahead.recorded_at) / 1000
        yield Finding("I6", order_id, f"confirmed at {iso_ms(ahead.confirmed_at)} by the clock that accepted it, "
                                      f"{ahead_s:.0f} s after it was written to Kafka ({iso_ms(ahead.recorded_at)}): "
                                      f"a clock that ran ahead; the analytics count its {ahead.total_cents} "
                                      f"{ahead.currency} in the minute of {iso_ms(written)}, the warehouse in that "
                                      f"of {iso_ms(said)}")
    for start, currency in sorted(snapshot.revenue.keys() | confirmed_by_minute.keys()):
        cents, orders, late_cents, late_orders = snapshot.revenue.get((start, currency), (0, 0, 0, 0))
        confirmed_cents, confirmed = confirmed_by_minute.get((start, currency), (0, 0))
        if (start, currency) not in snapshot.revenue and (confirmed_cents, confirmed) == (0, 0):
            continue  # a minute only a confirmation timed ahead was in, moved to the minute it was written
        if (cents + late_cents, orders + late_orders) != (confirmed_cents, confirmed):
            yield Finding("I6", f"{iso_ms(start)} {currency}",
                          f"revenue {cents} for {orders} orders (and {late_cents} for {late_orders} late), the "
                          f"warehouse's confirmed orders of that minute {confirmed_cents} for {confirmed}")


#: How what an invariant was checked over begins when it was not checked at all (I6 only).
NOT_CHECKED = "not checked: "


def _revenue_checked(snapshot: Snapshot) -> str:
    if snapshot.revenue is None:
        return f"{NOT_CHECKED}{snapshot.revenue_skipped}"
    windows = {start for start, _ in snapshot.revenue.keys() | snapshot.confirmed.keys()}
    if not windows:  # (a short drill: its confirmations all in the minute it began, which is not whole)
        return (f"{NOT_CHECKED}no confirmation and no revenue window from {iso_ms(snapshot.revenue_from)} "
                "(whole minutes from the audit's start are compared)")
    late = sum(late for _, _, _, late in snapshot.revenue.values())
    return (f"{len(windows)} one-minute windows from {iso_ms(snapshot.revenue_from)}, "
            f"{sum(n for _, n in snapshot.confirmed.values())} confirmed orders ({late} of them late)")


#: The headers a dead letter must carry (invariant I8): where it came from, and why it failed (a sink's: Connect's).
REQUIRED_HEADERS = (*DeadLetter.SOURCE_HEADERS, DlqHeader.ERROR_CLASS, DlqHeader.ERROR_MESSAGE, DlqHeader.FLOW)
SINK_REQUIRED_HEADERS = (*SinkLetter.SOURCE_HEADERS, ConnectHeader.CONNECTOR, ConnectHeader.EXCEPTION_CLASS)


def _dead_letters(snapshot: Snapshot) -> Iterable[Finding]:
    """I8: each dead letter names its source (topic, partition, offset: numbers, on one of the stack's topics)
    and its error."""
    for letter in snapshot.dead_letters:
        sink = isinstance(letter, SinkLetter)
        subject = f"{'warehouse dead letter' if sink else 'dead letter'} {letter.position}"
        required = SINK_REQUIRED_HEADERS if sink else REQUIRED_HEADERS
        # An error's message may be empty (an exception raised without one); nothing else may.
        present = {name: value for name, value in letter.headers if value or name == DlqHeader.ERROR_MESSAGE}
        if missing := [name for name in required if name not in present]:
            yield Finding("I8", subject, f"has no {', '.join(missing)}")
        elif letter.source_partition is None or letter.source_offset is None:
            yield Finding("I8", subject, f"names partition {letter.header(letter.SOURCE_HEADERS[1])!r} and offset "
                                         f"{letter.header(letter.SOURCE_HEADERS[2])!r}, not numbers")
        elif snapshot.topics and letter.source_topic not in snapshot.topics:
            yield Finding("I8", subject, f"names {letter.source_topic!r}, not one of the stack's topics")


def _letters_checked(snapshot: Snapshot) -> str:
    sinks = sum(1 for letter in snapshot.dead_letters if isinstance(letter, SinkLetter))
    return (f"{len(snapshot.dead_letters) - sinks} dead letters, {sinks} rows the warehouse sinks could not take")


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 time in UTC, to the second."""
    return iso_utc(ms)[:19] + "Z"


def _warehouse_equals_api(snapshot: Snapshot) -> Iterable[Finding]:
    for order_id, api in snapshot.api_orders.items():
        row = snapshot.warehouse_rows.get(order_id)
        if api is None:
            # One settled for good (CANCELLED or DELIVERED) a retention ago is forgotten by the workers and kept in
            # the warehouse; a CONFIRMED or SHIPPED one is kept however old (it may still be cancelled or delivered),
            # so one the API does not know is lost, not forgotten.
            forgotten = row is not None and row["status"] in FINAL and snapshot.retention_ms > 0 and (
                snapshot.now_ms - row["updated_at"] > snapshot.retention_ms)
            if not forgotten:
                yield Finding("I7", order_id, "in the warehouse, unknown to the API")
            continue
        expected = {column: value(api) for column, value in ORDER_COLUMNS.items()}
        found = {column: (row or {}).get(column) for column in ORDER_COLUMNS}
        if differing := [c for c in ORDER_COLUMNS if found[c] != expected[c]]:
            shown = ", ".join(f"{c} {found[c]!r} (API {expected[c]!r})" for c in differing)
            yield Finding("I7", order_id, f"warehouse row differs: {shown}")
        api_lines = sorted((ln["sku"], ln["quantity"], ln["unit_price_cents"], ln["status"]) for ln in api["lines"])
        if (rows := snapshot.warehouse_lines.get(order_id, [])) != api_lines:
            yield Finding("I7", order_id, f"warehouse lines {rows}, API {api_lines}")


# --- Reading the stack ------------------------------------------------------------------------------------------

def _ms(column: str) -> str:
    return f"(extract(epoch from {column}) * 1000)::bigint"


def read_snapshot(settings: Settings, *, since_ms: int | None, sample: int | None, skus: list[str] | None = None,
                  expected: Collection[str] = ()) -> Snapshot:
    """The warehouse's orders placed since ``since_ms`` (all without it) with a line of one of ``skus`` (any without
    them), the stock of every SKU they ordered (every SKU any order moved, when neither narrows the orders), the
    gateway's ledger, the API's view of the orders :func:`sampled`, and of each ``expected`` order (accepted by the
    API, says the caller) the warehouse does not hold."""
    import psycopg

    from streamcart.commands import read_dead_letters, read_sink_letters
    from streamcart.topics import topic_specs

    since = 0 if since_ms is None else since_ms
    scoped = since_ms is not None or bool(skus)
    revenue_skipped = _revenue_not_checked(settings, bool(skus))
    revenue_checked = revenue_skipped is None
    snapshot = Snapshot(now_ms=int(time.time() * 1000), retention_ms=int(settings.order_retention_s * 1000),
                        revenue_skipped=revenue_skipped or "")
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True, connect_timeout=5) as conn:
            def rows(sql: str, params: dict[str, object] | None = None) -> list[tuple[Any, ...]]:
                try:
                    return conn.execute(sql, params).fetchall()
                except psycopg.errors.UndefinedTable:  # a sink creates its table with its first row
                    return []

            scope: dict[str, object] = {"since": since, "skus": skus}
            placed = "placed_at >= to_timestamp(%(since)s / 1000.0)" + (
                " and order_id in (select order_id from order_lines where sku = any(%(skus)s))" if skus else "")
            columns = ("order_id", *ORDER_COLUMNS, "updated_at")
            select = ", ".join(_ms(c) if c in TIME_COLUMNS | {"updated_at"} else c for c in columns)
            for values in rows(f"select {select} from orders where {placed}", scope):
                row = dict(zip(columns, values, strict=True))
                snapshot.orders.append(row)
                snapshot.warehouse_rows[row["order_id"]] = row
            for order_id, sku, quantity, price, status in rows(
                    f"select order_id, sku, quantity, unit_price_cents, status from order_lines where {placed}", scope):
                snapshot.lines.append({"order_id": order_id, "sku": sku, "quantity": quantity, "status": status})
                snapshot.warehouse_lines.setdefault(order_id, []).append((sku, quantity, price, status))
            for found in snapshot.warehouse_lines.values():
                found.sort()
            ids = list(snapshot.warehouse_rows)
            for order_id, event, amount in rows(
                    "select order_id, event, amount_cents from payments where order_id = any(%(ids)s)", {"ids": ids}):
                snapshot.payments.append({"order_id": order_id, "event": event, "amount_cents": amount})
            if skus:
                skus = sorted(set(skus))
            elif since_ms is not None:
                skus = sorted({line["sku"] for line in snapshot.lines})
            else:
                skus = [sku for (sku,) in rows("select distinct sku from stock_movements")]
            by_movement: defaultdict[str, dict[str, int]] = defaultdict(dict)
            for sku, movement, quantity, reserved in rows(
                    "select sku, movement, sum(quantity), sum(reserved_delta) from stock_movements "
                    "where sku = any(%(skus)s) group by sku, movement", {"skus": skus}):
                by_movement[sku][movement] = int(quantity)
                by_movement[sku]["reserved_delta"] = by_movement[sku].get("reserved_delta", 0) + int(reserved)
            if since_ms is not None:
                snapshot.earlier_unsettled = [int(deadline) for (deadline,) in rows(
                    f"select {_ms('deadline_at')} from orders where status <> all(%(settled)s) "
                    "and placed_at < to_timestamp(%(since)s / 1000.0) "
                    "and order_id in (select order_id from order_lines where sku = any(%(skus)s))",
                    {"settled": sorted(OrderStatus.SETTLED), "since": since, "skus": skus})]
            snapshot.kept_units = {sku: int(units) for sku, units in rows(
                "select l.sku, sum(l.quantity) from order_lines l join orders o using (order_id) "
                "where o.status = any(%(kept)s) and l.sku = any(%(skus)s) group by l.sku",
                {"kept": sorted(KEPT), "skus": skus})}
            snapshot.movements = {sku: Movements(committed=m.get("committed", 0), restocked=m.get("restocked", 0),
                                                 reserved=m.get("reserved_delta", 0))
                                  for sku, m in by_movement.items()}
            if revenue_checked:
                snapshot.revenue_from = revenue_from(settings, since_ms, snapshot.now_ms)
                by_minute = rows(
                    f"select {_ms('confirmed_at')} / {MINUTE_MS} * {MINUTE_MS}, currency, sum(total_cents), count(*) "
                    "from orders where confirmed_at >= to_timestamp(%(from)s / 1000.0) group by 1, 2",
                    {"from": snapshot.revenue_from})
                snapshot.confirmed = {(int(start), currency): (int(cents), int(n))
                                      for start, currency, cents, n in by_minute}
                snapshot.ahead = {order_id: Ahead(int(at), int(recorded), currency, int(total))
                                  for order_id, at, recorded, currency, total in rows(
                    f"select o.order_id, {_ms('o.confirmed_at')}, {_ms('p.recorded_at')}, o.currency, o.total_cents "
                    "from orders o join payments p on p.order_id = o.order_id and p.event = 'authorized' "
                    "where o.confirmed_at is not null and p.recorded_at is not null "
                    "and o.confirmed_at > p.recorded_at + make_interval(secs => %(ahead)s / 1000.0) "
                    "and (o.confirmed_at >= to_timestamp(%(from)s / 1000.0) "
                    "or p.recorded_at >= to_timestamp(%(from)s / 1000.0))",
                    {"from": snapshot.revenue_from, "ahead": MAX_AHEAD_MS})}
    except psycopg.Error as exc:
        raise AuditUnavailable(f"the warehouse at {settings.postgres_host or settings.host}:"
                               f"{settings.postgres_port} did not answer: {exc}".strip()) from exc
    api = _Api(settings)
    if revenue_checked:
        snapshot.revenue = api.revenue(snapshot.revenue_from)
        if snapshot.revenue is None:
            snapshot.revenue_skipped = ("a partition of the order events has no analytics clock yet (the stack has "
                                        "just started)")
    snapshot.stock = {sku: api.stock(sku) for sku in skus}
    snapshot.api_orders = {order_id: api.order(order_id) for order_id in sampled(snapshot.orders, sample, scoped)}
    snapshot.unrecorded = {order_id: api.order(order_id) for order_id in sorted(set(expected))
                           if order_id not in snapshot.warehouse_rows}
    snapshot.ledger = _ledger(settings)
    snapshot.dead_letters = [*read_dead_letters(settings, None, since_ms=since_ms),
                             *read_sink_letters(settings, since_ms=since_ms)]
    snapshot.topics = frozenset(spec.name for spec in topic_specs(settings))
    return snapshot


def _revenue_not_checked(settings: Settings, narrowed_to_skus: bool) -> str | None:
    """Why I6 cannot be checked, if it cannot."""
    if narrowed_to_skus:
        return "the audit is narrowed to SKUs (--sku), and revenue is kept per currency, not per SKU"
    if not settings.analytics:
        return "the analytics flow is off (STREAMCART_ANALYTICS=false)"
    return None


def revenue_from(settings: Settings, since_ms: int | None, now_ms: int) -> int:
    """The first revenue window I6 checks: the first whole minute from ``since_ms``, and one the analytics still
    keep (they forget a window ``analytics_retention_s`` after its end by the watermark, which may run up to
    :data:`~streamcart.domain.analytics.MAX_AHEAD_MS` ahead of now; a minute more for the one being forgotten)."""
    kept_from = now_ms - int(settings.analytics_retention_s * 1000) + MAX_AHEAD_MS + MINUTE_MS
    start = max(since_ms or 0, kept_from)
    return -(-start // MINUTE_MS) * MINUTE_MS


#: Without ``--since``/``--sku`` (every order a stack ever had), how many of the latest orders, and of the others
#: at random, are compared with the API.
DEFAULT_SAMPLE = 200


def sampled(orders: list[dict[str, Any]], sample: int | None, scoped: bool) -> list[str]:
    """Which orders are read from the API: ``sample`` latest ones; by default every one when the audit is narrowed
    (``scoped``), else the :data:`DEFAULT_SAMPLE` latest and as many others at random (a row left stale because its
    later state never came is older than the latest)."""
    by_age = [o["order_id"] for o in sorted(orders, key=lambda o: o["updated_at"], reverse=True)]
    if sample is not None:
        return by_age[:sample]
    if scoped:
        return by_age
    older = by_age[DEFAULT_SAMPLE:]
    return by_age[:DEFAULT_SAMPLE] + random.sample(older, min(DEFAULT_SAMPLE, len(older)))


#: How long one read waits out the API's 429s and 503s.
API_PATIENCE_S = 30.0


class _Api:
    """Worker 0's API as an admin (it forwards each key to its owner)."""

    def __init__(self, settings: Settings) -> None:
        from api.auth import issue_token

        self.base = settings.worker_url(0)
        self.token = issue_token(settings.jwt_secret.get_secret_value(), "audit", ["admin"], ttl_s=600)

    def get(self, path: str) -> tuple[int, Any]:
        """The status and JSON of ``GET path``. A 429 (the API's rate limit, which an audit of thousands of orders
        meets) or 503 (a rebalance) is asked again a second later, for up to :data:`API_PATIENCE_S`; then it is
        :class:`AuditUnavailable`, for the audit to wait and read again."""
        from streamcart.stack.probes import http_get_json

        given_up = time.monotonic() + API_PATIENCE_S
        while True:
            try:
                status, body = http_get_json(f"{self.base}{path}", 10.0,
                                             headers={"Authorization": f"Bearer {self.token}"})
            except OSError as exc:
                raise AuditUnavailable(f"the API at {self.base} does not answer ({getattr(exc, 'reason', exc)}): "
                                       "is the stack up (`streamcart status`)?") from exc
            if status not in (429, 503):
                return status, body
            if time.monotonic() >= given_up:
                raise AuditUnavailable(f"the API answered {status} to GET {path} for {API_PATIENCE_S:g} s")
            time.sleep(1.0)

    def stock(self, sku: str) -> Stock:
        status, body = self.get(f"/v1/stock/{quote(sku, safe='')}")
        if status == 404:  # ordered, never stocked: every counter 0
            return Stock()
        if status != 200:
            raise AuditUnavailable(f"GET /v1/stock/{sku} answered {status}: {body}")
        return Stock(**{name: body[name] for name in ("on_hand", "reserved", "adjusted", "sold", "restocked")})

    def revenue(self, since_ms: int) -> dict[tuple[int, str], tuple[int, int, int, int]] | None:
        """Every revenue window from ``since_ms`` (open or closed: at a quiet moment each holds every confirmation of
        its minute but the late ones, which are beside it), or ``None`` while a partition has no watermark."""
        status, body = self.get(f"/v1/analytics/revenue?from={since_ms}")
        if status != 200:
            raise AuditUnavailable(f"GET /v1/analytics/revenue answered {status}: {body}")
        if body["watermark"] is None:
            return None
        return {(w["window_start"], w["currency"]): (w["revenue_cents"], w["orders"], w.get("late_revenue_cents", 0),
                                                     w.get("late_orders", 0)) for w in body["windows"]}

    def order(self, order_id: str) -> dict[str, Any] | None:
        status, body = self.get(f"/v1/orders/{quote(order_id, safe='')}")
        if status == 404:
            return None
        if status != 200:
            raise AuditUnavailable(f"GET /v1/orders/{order_id} answered {status}: {body}")
        return dict(body)


def _ledger(settings: Settings) -> list[dict[str, Any]] | None:
    """Every authorization the gateway holds, or ``None`` when it lists none (404: a real provider's API). A
    gateway that does not answer is no reason to skip the check: the audit waits for it."""
    from streamcart.stack.probes import http_get_json

    url = f"{settings.gateway_url}/v1/authorizations"
    try:
        status, body = http_get_json(url, 30.0)
    except OSError as exc:
        raise AuditUnavailable(f"the payment gateway at {url} does not answer ({getattr(exc, 'reason', exc)})") \
            from exc
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise AuditUnavailable(f"the payment gateway at {url} answered {status}")
    return list(body.get("authorizations", []))


@dataclass(frozen=True)
class Positions:
    """Where the workers and the warehouse sinks are: for each partition they read, (their offset, its end)."""

    offsets: dict[tuple[str, str, int], tuple[int, int]]
    sinks_healthy: bool
    workers_group: str = ""
    #: The order events: about once a minute per partition an idle stack's analytics clock writes a tick there
    #: (agents/analytics.py), which changes nothing the audit reads, and an order event is never written alone
    #: (its order's warehouse row goes with it). What was written is compared without it.
    ticked_topic: str = ""

    def written(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        """The offsets, but the ticked topic's: what a record written while the audit read would change."""
        return {key: value for key, value in self.offsets.items() if key[1] != self.ticked_topic}

    @property
    def behind(self) -> dict[str, int]:
        """Records not consumed yet, by consumer (``workers``, ``warehouse sinks``), only those behind."""
        behind: Counter[str] = Counter()
        for (group, _, _), (position, end) in self.offsets.items():
            behind["workers" if group == self.workers_group else "warehouse sinks"] += max(0, end - position)
        return {group: n for group, n in behind.items() if n}


def positions(settings: Settings) -> Positions:
    """The workers' and the sinks' positions on every partition of what they read (streamcart/stack/admin.py,
    :func:`~streamcart.stack.admin.backlogs`; a sink's past the rows it dead-lettered last on a partition,
    :func:`~streamcart.connectors.sink_positions`), and whether every sink runs."""
    from streamcart import connectors
    from streamcart.stack.admin import backlogs
    from streamcart.topics import Topics

    loaded = connectors.load(settings)
    topics = Topics.from_settings(settings)
    offsets = {**backlogs(settings, {settings.app_id: topics.worker_inputs()}),
               **connectors.sink_positions(settings, loaded)}
    statuses = connectors.status(settings, with_lag=False)
    return Positions(offsets, all(row.healthy for row in statuses), settings.app_id, topics.order_events)


def audit(settings: Settings, *, since_ms: int | None = None, skus: list[str] | None = None,
          sample: int | None = None, expected: Collection[str] = (), wait_s: float = 120.0, grace_s: float = GRACE_S,
          on_wait: Callable[[str], None] = lambda _: None,
          read: Callable[..., Snapshot] = read_snapshot, at: Callable[[Settings], Positions] = positions,
          pause: Callable[[float], None] = time.sleep) -> Report:
    """Wait (up to ``wait_s``) for a quiet moment, read the stack at it and check every invariant. A part of the
    stack that does not answer meanwhile (a process restarting, a rebalance's 503) is waited for too. ``expected``:
    order ids the API accepted (a drill's), each of which must be somewhere. (``read``, ``at`` and ``pause`` are the
    stack's, unless a test's.)"""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            before = at(settings)
            why = _not_quiet(before)
            if not why:
                snapshot = read(settings, since_ms=since_ms, sample=sample, skus=skus, expected=expected)
                if at(settings).written() != before.written():
                    why = "records were written while the audit read"
                elif pending := [deadline for deadline in (
                        *(o["deadline_at"] for o in snapshot.orders if o["status"] not in OrderStatus.SETTLED),
                        *snapshot.earlier_unsettled) if snapshot.now_ms - deadline <= grace_s * 1000]:
                    why = f"{len(pending)} orders still within their deadline"
                else:
                    return check(snapshot, grace_s=grace_s)
        except StreamcartError as exc:  # AuditUnavailable, or Kafka's or Connect's StackError / ConnectError
            why = str(exc)
        if time.monotonic() >= deadline:
            raise AuditUnavailable(f"the stack was not quiet within {wait_s:g} s ({why}): the invariants hold once "
                                   "nothing is in flight; stop the traffic (or wait longer: --wait) and run it again")
        on_wait(why)
        pause(1.0)


def every(seconds: float, say: Callable[[str], None]) -> Callable[[str], None]:
    """``say``, at most once every ``seconds``: what the audit waits for changes every second while anything
    flows."""
    last = [float("-inf")]

    def maybe(text: str) -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            say(text)

    return maybe


def _not_quiet(at: Positions) -> str:
    if not at.sinks_healthy:
        return "a warehouse sink is not running (`streamcart connectors status`)"
    if behind := at.behind:
        return ", ".join(f"{who} {n} record{'s' if n > 1 else ''} behind" for who, n in sorted(behind.items(),
                                                                                                  reverse=True))
    return ""
