"""Every message of DESIGN.md §2 as one Python type; each has exactly one Avro schema in ``schemas/avro/``.

Messages are plain, immutable data. Commands are imperative (``ReserveStock``), events past tense
(``StockReserved``). Every message carries the common envelope (:class:`Message`); the key it is partitioned
by is named by its ``KEY`` and the topic it travels on by its ``TOPIC`` (an attribute of
:class:`streamcart.topics.Topics`).

Enumerations travel as strings (a reader must not fail on a reason it does not know yet); the known values are
the constants below. Money is integer minor units with an ISO 4217 currency, never a float. Times are epoch
milliseconds (event time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from streamcart.ids import IDENTIFIER_PATTERN
from streamcart.text import CURRENCY_PATTERN, printable

NAMESPACE = "streamcart"

# What a command from outside may ask, whoever wrote it to Kafka (the API holds its requests to the same, or less):
# sums and products of these stay far inside Avro's longs and PostgreSQL's bigints. A price of 2**62 reserved twice
# made an order's total one its AuthorizePayment could not be encoded with; a stock adjusted by 2**63 - 1 twice
# stood at 2**64. A message beyond them does not decode (it is dead-lettered).
#: Units of one SKU one order line asks for.
MAX_LINE_QUANTITY = 1_000
#: Lines of one order.
MAX_ORDER_LINES = 50
#: A product's unit price, in minor units (a million in major ones).
MAX_UNIT_PRICE_CENTS = 100_000_000
#: Units one stock adjustment adds or writes off (the API's admins are held to a thousandth of it; the benchmarks
#: stock their SKUs in one).
MAX_ADJUSTMENT = 1_000_000_000


#: The latest event time a message may carry (5000-01-01T00:00:00Z): its times and deadlines stay dates Python,
#: Avro and PostgreSQL can all show (a PlaceOrder of year 292278994 was stored, then its warehouse row could not be
#: made, and it stayed PENDING for good).
MAX_TIME_MS = 95_617_584_000_000


# The fields of the commands anyone may write (the API's requests, or a producer of its own), held to what the API
# takes: a NUL in a customer id had stopped the warehouse's orders sink for good (PostgreSQL takes no NUL in
# text), an order id of "" held stock it never released, and "eur" was a currency.
#: An order id or a SKU (what the API's paths take).
Id = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
#: Text without control characters.
Plain = Annotated[str, AfterValidator(printable)]
#: An ISO 4217 code.
Currency = Annotated[str, Field(pattern=CURRENCY_PATTERN)]


class Record(BaseModel):
    """A value type nested inside messages (an Avro record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class OrderLine(Record):
    """A line as the customer asked for it: no price (prices come from the catalog)."""

    sku: Id
    quantity: int = Field(gt=0, le=MAX_LINE_QUANTITY)


#: Lines of an order, as a message or a request body has them (each with a ``sku`` and a ``quantity``).
Lines = TypeVar("Lines", bound=Sequence[Any])


def each_sku_within_limit(lines: Lines) -> Lines:
    """``lines``, where no SKU is asked for more than :data:`MAX_LINE_QUANTITY` units over all its lines: an order
    keeps one line per SKU, their sum (a reservation is one per order and SKU), which is held to that limit too."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    for sku, units in totals.items():
        if units > MAX_LINE_QUANTITY:
            raise ValueError(f"{units} units of {sku} over its lines, more than the {MAX_LINE_QUANTITY} an order "
                             "may ask of one SKU")
    return lines


class PricedLine(Record):
    """A line with the catalog unit price it was reserved at."""

    sku: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)


class Message(Record):
    """The envelope every message carries.

    ``event_id`` is unique per message and deterministic for derived messages (same input, same id), so a
    consumer can drop what it has already applied. ``causation_id`` is the ``event_id`` of the message that
    caused this one; ``correlation_id`` is shared by everything one request set off (for a saga: the order
    id).
    """

    TOPIC: ClassVar[str]
    KEY: ClassVar[str]

    event_id: str
    occurred_at: int = Field(ge=0, le=MAX_TIME_MS, description="event time, epoch milliseconds")
    causation_id: str
    correlation_id: str

    @property
    def key(self) -> str:
        """The partitioning key: the value of the field named by ``KEY``."""
        return str(getattr(self, self.KEY))


# --- Known string values ------------------------------------------------------------------------------------

class CancelReason:
    OUT_OF_STOCK = "out_of_stock"
    PRODUCT_UNAVAILABLE = "product_unavailable"
    PAYMENT_DECLINED = "payment_declined"
    TIMEOUT = "timeout"
    CUSTOMER_REQUEST = "customer_request"


class StockRejection:
    """Why inventory refused a reservation (``StockRejected.reason``)."""

    OUT_OF_STOCK = "out_of_stock"
    PRODUCT_UNAVAILABLE = "product_unavailable"
    #: The order released the line before its reservation arrived (out-of-order delivery); nothing is held.
    RELEASED = "released"


class ShipmentStatus:
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"


# --- commands.orders (key order_id) -------------------------------------------------------------------------

class OrderCommand(Message):
    TOPIC = "order_commands"
    KEY = "order_id"
    order_id: str


class PlaceOrder(OrderCommand):
    """A customer asks for an order. Prices are not the client's to give."""

    order_id: Id
    customer_id: Plain
    lines: Annotated[tuple[OrderLine, ...], AfterValidator(each_sku_within_limit)] = Field(
        min_length=1, max_length=MAX_ORDER_LINES)
    currency: Currency
    payment_token: Plain
    webhook_url: Plain | None = None
    #: Where the order's email and SMS notifications go (none when absent).
    email: Plain | None = None
    phone: Plain | None = None


class CancelOrder(OrderCommand):
    """A customer or an admin asks to cancel an order."""

    order_id: Id
    requested_by: Plain
    reason: Plain = CancelReason.CUSTOMER_REQUEST


class ExpireOrder(OrderCommand):
    """Internal: an order's deadline has passed. Emitted by timers; the orders flow decides what it means."""

    deadline: int


class ForgetOrder(OrderCommand):
    """Internal: a settled order's retention has run out (``forget_at``). Emitted by timers; the orders flow
    forgets the order's payment, shipment and analytics marks and sends itself DropOrder."""

    forget_at: int


class DropOrder(OrderCommand):
    """Internal: everything else of a forgotten order kept in its partition is gone for good; now inventory is asked
    to forget its reservations of ``skus``, and the order itself goes (last, so a crash at any point leaves the
    order there to do the rest again)."""

    forget_at: int
    skus: tuple[str, ...] = ()


class IndexOrder(OrderCommand):
    """Internal: file a stored order in the indexes kept beside it (its customer's list, the retention index), for
    orders stored before those existed (``streamcart order reindex``); one already filed changes nothing."""


# --- commands.catalog (key sku) -----------------------------------------------------------------------------

class UpsertProduct(Message):
    TOPIC = "catalog_commands"
    KEY = "sku"
    sku: Id
    name: Plain
    unit_price_cents: int = Field(ge=0, le=MAX_UNIT_PRICE_CENTS)
    currency: Currency
    active: bool = True


# --- commands.inventory (key sku) ---------------------------------------------------------------------------

class InventoryCommand(Message):
    TOPIC = "inventory_commands"
    KEY = "sku"
    sku: str


class AdjustStock(InventoryCommand):
    """An admin changes what is on hand (a delivery, a count, a write-off)."""

    sku: Id
    delta: int = Field(ge=-MAX_ADJUSTMENT, le=MAX_ADJUSTMENT)
    reason: Plain


class ReserveStock(InventoryCommand):
    """Internal: hold ``quantity`` of ``sku`` for an order, priced from the catalog."""

    order_id: str
    quantity: int = Field(gt=0, le=MAX_LINE_QUANTITY)
    currency: str


class ReleaseStock(InventoryCommand):
    """Internal: give back an order's reservation (compensation)."""

    order_id: str
    reason: str


class CommitStock(InventoryCommand):
    """Internal: an order's reservation becomes sold."""

    order_id: str


class RestockItems(InventoryCommand):
    """Internal: what an order bought goes back on hand (refund before dispatch)."""

    order_id: str


class ForgetReservation(InventoryCommand):
    """Internal: the order is forgotten (its retention ran out): drop its settled reservation of ``sku``."""

    order_id: str


# --- commands.payments (key order_id) -----------------------------------------------------------------------

class PaymentCommand(Message):
    TOPIC = "payment_commands"
    KEY = "order_id"
    order_id: str


class AuthorizePayment(PaymentCommand):
    customer_id: str
    amount_cents: int = Field(ge=0)
    currency: str
    payment_token: str


class CapturePayment(PaymentCommand):
    authorization_id: str
    amount_cents: int = Field(ge=0)
    currency: str


class VoidPayment(PaymentCommand):
    authorization_id: str | None = None
    reason: str


class RefundPayment(PaymentCommand):
    authorization_id: str | None = None
    amount_cents: int = Field(ge=0)
    currency: str
    reason: str


# --- commands.shipping (key order_id) -----------------------------------------------------------------------

class UpdateShipment(Message):
    TOPIC = "shipping_commands"
    KEY = "order_id"
    order_id: Id
    status: str = Field(description="dispatched | delivered")
    carrier: Plain | None = None


# --- events.orders (key order_id) ---------------------------------------------------------------------------

class OrderEvent(Message):
    TOPIC = "order_events"
    KEY = "order_id"
    order_id: str
    customer_id: str


class OrderPlaced(OrderEvent):
    lines: tuple[OrderLine, ...]
    currency: str
    deadline: int


class OrderConfirmed(OrderEvent):
    lines: tuple[PricedLine, ...]
    total_cents: int
    currency: str
    authorization_id: str


class OrderCancelled(OrderEvent):
    reason: str
    detail: str | None = None


class OrderCancelRequested(OrderEvent):
    """A confirmed order's cancel, waiting for shipping to stop the shipment (or to have dispatched it already)."""

    reason: str
    detail: str | None = None


class OrderShipped(OrderEvent):
    tracking_id: str


class OrderDelivered(OrderEvent):
    tracking_id: str


class ClockTick(Message):
    """Time passes on one partition of ``events.orders`` that no order event moved for a while: what closes the
    analytics windows of a partition gone quiet (streamcart.domain.analytics). Not about an order; the flows that
    act on orders leave it alone.

    The worker owning ``partition`` writes it there (``slot`` is a key that lands on it), in line with the order
    events, so it comes after every event written before it. ``watermark`` is where it moves the partition's clock:
    the last window close before which no order event can still come but late (the tick's time less an order's
    deadline, and never past the partition's oldest order in flight: streamcart.domain.analytics.tick_watermark).
    """

    TOPIC = "order_events"
    KEY = "slot"
    partition: int
    slot: str
    watermark: int


# --- events.inventory (key order_id) ------------------------------------------------------------------------

class InventoryEvent(Message):
    TOPIC = "inventory_events"
    KEY = "order_id"
    order_id: str
    sku: str
    quantity: int


class StockReserved(InventoryEvent):
    unit_price_cents: int
    currency: str


class StockRejected(InventoryEvent):
    reason: str = Field(description="out_of_stock | product_unavailable | released")
    available: int
    detail: str | None = None


class StockReleased(InventoryEvent):
    pass


class StockCommitted(InventoryEvent):
    pass


class StockRestocked(InventoryEvent):
    pass


# --- events.payments (key order_id) -------------------------------------------------------------------------

class PaymentEvent(Message):
    TOPIC = "payment_events"
    KEY = "order_id"
    order_id: str
    amount_cents: int
    currency: str


class PaymentAuthorized(PaymentEvent):
    authorization_id: str


class PaymentDeclined(PaymentEvent):
    reason: str


class PaymentCaptured(PaymentEvent):
    authorization_id: str


class PaymentVoided(PaymentEvent):
    authorization_id: str | None = None


class PaymentRefunded(PaymentEvent):
    authorization_id: str | None = None


# --- events.shipping (key order_id) -------------------------------------------------------------------------

class ShippingEvent(Message):
    TOPIC = "shipping_events"
    KEY = "order_id"
    order_id: str
    tracking_id: str


class ShipmentCreated(ShippingEvent):
    carrier: str


class ShipmentDispatched(ShippingEvent):
    #: The carrier the admin named when reporting the dispatch (``None``: the one booked at creation carries it).
    carrier: str | None = None


class ShipmentDelivered(ShippingEvent):
    pass


class ShipmentCancelled(ShippingEvent):
    """The shipment was stopped before it left: the order's refund and restock may go ahead."""


# --- events.notifications (key customer_id) -----------------------------------------------------------------

class NotificationEvent(Message):
    TOPIC = "notification_events"
    KEY = "customer_id"
    customer_id: str
    order_id: str
    channel: str = Field(description="webhook | email | sms")
    template: str = Field(description="order_confirmed | order_cancelled | shipment_dispatched")
    attempts: int


class NotificationSent(NotificationEvent):
    pass


class NotificationFailed(NotificationEvent):
    reason: str


# --- analytics.* (key: the window) --------------------------------------------------------------------------

class WindowResult(Message):
    """A closed event-time window's result.

    ``source_partition`` is set when the result covers the orders of one partition of ``events.orders`` only (a
    partial: each worker aggregates the partitions it owns; the window's total is the sum over partitions). The
    key then names the partition too, so compaction keeps every partial of a window.
    """

    KEY = "result_key"
    window_start: int
    window_end: int
    source_partition: int | None = None

    @property
    def window_key(self) -> str:
        return f"{self.window_start}"

    @property
    def result_key(self) -> str:
        suffix = "" if self.source_partition is None else f"/p{self.source_partition}"
        return self.window_key + suffix


class RevenueWindow(WindowResult):
    """A revenue window's result: what was confirmed on time, and what confirmations that came after it had
    closed would have added (sent again, under the same key, each time one adds to it)."""

    TOPIC = "analytics_revenue"
    currency: str
    revenue_cents: int
    orders: int
    late_revenue_cents: int = 0
    late_orders: int = 0

    @property
    def window_key(self) -> str:
        return f"{self.window_start}:{self.currency}"


class SkuUnitsWindow(WindowResult):
    TOPIC = "analytics_sku_units"
    sku: str
    units: int

    @property
    def window_key(self) -> str:
        return f"{self.window_start}:{self.sku}"


class OutcomeWindow(WindowResult):
    TOPIC = "analytics_outcomes"
    confirmed: int
    cancelled_by_reason: dict[str, int]


def _concrete(base: type[Message]) -> list[type[Message]]:
    found: list[type[Message]] = []
    for sub in base.__subclasses__():
        if sub.__subclasses__():
            found.extend(_concrete(sub))
        else:
            found.append(sub)
    return found


#: Every concrete message type by its record name. The codec maps schema names to these.
MESSAGE_TYPES: dict[str, type[Message]] = {cls.__name__: cls for cls in _concrete(Message)}
#: Value types nested in messages.
RECORD_TYPES: tuple[type[Record], ...] = (OrderLine, PricedLine)
