"""The HTTP API's request and response bodies (DESIGN.md §5). The OpenAPI document is generated from these."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.messages import MAX_LINE_QUANTITY, MAX_ORDER_LINES, MAX_UNIT_PRICE_CENTS, each_sku_within_limit
from streamcart.ids import IDENTIFIER_PATTERN
from streamcart.text import CONTROL, CONTROL_CHARS, CURRENCY_PATTERN, printable

#: No space and no control character (:data:`streamcart.text.CONTROL_CHARS`) anywhere: an address reaches a provider,
#: a log, a terminal.
EMAIL_PATTERN = rf"^[^@\s{CONTROL_CHARS}]+@[^@\s{CONTROL_CHARS}]+\.[^@\s{CONTROL_CHARS}]+$"
PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"
ORDER_CURSOR_PATTERN = r"^[0-9]{1,15}\." + IDENTIFIER_PATTERN[1:]
#: What each pattern asks for, in words: a 422 says this, not the regular expression.
PATTERN_MEANING = {
    IDENTIFIER_PATTERN: "an identifier: 1-64 letters, digits and . _ : -, starting with a letter or digit",
    CURRENCY_PATTERN: "a currency code of three capital letters, such as EUR",
    EMAIL_PATTERN: "an email address, such as ada@example.com",
    PHONE_PATTERN: "a phone number in E.164 form: + and 7 to 15 digits, such as +4915112345678",
    ORDER_CURSOR_PATTERN: "the next_cursor of the previous page",
}


def plain_message(error: Mapping[str, Any]) -> str:
    """A validation error's message (one of ``ValidationError.errors()``), a missed pattern said in words."""
    if error["type"] == "string_pattern_mismatch":
        meaning = PATTERN_MEANING.get(str(error.get("ctx", {}).get("pattern")))
        if meaning:
            return f"should be {meaning}"
    return str(error["msg"])


Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, examples=["KB-001"])]
Currency = Annotated[str, Field(pattern=CURRENCY_PATTERN, examples=["EUR"])]


def _json_integer(value: object) -> object:
    """A JSON integer as JSON Schema has it (``3``, and ``3.0``, a number with no fraction), not ``true`` or
    ``"3"``, which pydantic would read as 1 and 3."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON integer")
    return value


#: A body's integer: what the OpenAPI document's ``integer`` admits, and nothing pydantic would coerce besides.
JsonInteger = Annotated[int, BeforeValidator(_json_integer)]

#: Text without control characters (:data:`streamcart.text.CONTROL_CHARS`): no newline forging a log line, escape
#: sequence, NUL or reordering reaches a table, the warehouse, a notification or a terminal.
PRINTABLE_PATTERN = f"^[^{CONTROL_CHARS}]*$"


#: A body's free text (names, reasons, tokens): what the OpenAPI document's pattern admits, told plainly otherwise.
Text = Annotated[str, AfterValidator(printable), Field(json_schema_extra={"pattern": PRINTABLE_PATTERN})]


#: What a URL as written may not hold: whitespace, or a control character (:data:`streamcart.text.CONTROL`).
_NOT_IN_A_URL = re.compile(rf"\s|{CONTROL.pattern}")


def _url_as_sent(value: object) -> object:
    """A URL as the client wrote it, with no whitespace or control character in it: the URL parser would strip a
    tab or newline and encode a space, and an order would keep an address its customer never gave."""
    if isinstance(value, str) and (found := _NOT_IN_A_URL.search(value)) is not None:
        raise ValueError(f"must not contain whitespace or control characters (found {found.group()!r} at "
                         f"{found.start()})")
    return value


#: An http(s) URL, refused rather than rewritten when it holds what a URL may not.
HttpUrl = Annotated[AnyHttpUrl, BeforeValidator(_url_as_sent)]


class _Body(BaseModel):
    """A request body or query. A body's numbers and flags are JSON's (``"quantity": true`` or ``"3"`` is refused,
    not read as 1 or 3); a query's values are text, read as what their field is."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LineIn(_Body):
    sku: Identifier
    quantity: JsonInteger = Field(ge=1, le=MAX_LINE_QUANTITY)


class PaymentIn(_Body):
    token: Text = Field(min_length=1, max_length=128, examples=["tok_approve"])


class PlaceOrderIn(_Body):
    """A new order. Prices come from the catalog at reservation time, never from the client."""

    lines: Annotated[list[LineIn], AfterValidator(each_sku_within_limit)] = Field(
        min_length=1, max_length=MAX_ORDER_LINES,
        description=f"a SKU on several lines is one line of their sum, at most {MAX_LINE_QUANTITY} units")
    payment: PaymentIn
    currency: Currency
    webhook_url: HttpUrl | None = Field(default=None, description="where the order's notifications are POSTed")
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL_PATTERN,
                              description="where the order's email notifications go", examples=["ada@example.com"])
    phone: str | None = Field(default=None, pattern=PHONE_PATTERN,
                              description="where its SMS notifications go (E.164)", examples=["+15550100"])


class CancelIn(_Body):
    reason: Literal["customer_request"] = "customer_request"


class ProductIn(_Body):
    name: Text = Field(min_length=1, max_length=200)
    unit_price_cents: JsonInteger = Field(ge=0, le=MAX_UNIT_PRICE_CENTS)
    currency: Currency
    active: bool = Field(default=True, strict=True)


def _not_zero(delta: int) -> int:
    if delta == 0:
        raise ValueError("a delta of 0 changes no stock")
    return delta


class AdjustmentIn(_Body):
    #: Not 0: it would change nothing yet be remembered among the SKU's last 1,000 adjustments, pushing out the
    #: one an Idempotency-Key retry must find.
    delta: Annotated[JsonInteger, AfterValidator(_not_zero)] = Field(
        ge=-1_000_000, le=1_000_000, description="units added (positive) or written off (negative); not 0",
        json_schema_extra={"not": {"const": 0}})
    reason: Text = Field(min_length=1, max_length=200, examples=["delivery"])


class ShipmentStatusIn(_Body):
    status: Literal["dispatched", "delivered"]
    carrier: Text | None = Field(default=None, max_length=100)


class WaitQuery(_Body):
    wait: float = Field(default=0, ge=0, le=30, description="long-poll: seconds to wait for a terminal status")


class OrderPageQuery(_Body):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, pattern=ORDER_CURSOR_PATTERN,
                               description="`next_cursor` of the previous page (`placed_at.order_id`)")


class ProductPageQuery(_Body):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, pattern=IDENTIFIER_PATTERN,
                               description="`next_cursor` of the previous page (the last SKU seen)")


# --- Responses ------------------------------------------------------------------------------------------------

class Accepted(BaseModel):
    order_id: str
    status: str


class LineOut(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int | None = None
    status: str | None = None


class HistoryOut(BaseModel):
    """One step of the order (DESIGN.md §5: event, time); ``time`` is the event time in ms (a derived event has its
    cause's, so the steps that follow from a placement share its time); ``recorded`` is when the message that made
    the step was written to Kafka, in ms (``null`` for steps of orders placed before streamcart recorded it)."""

    event: str
    time: int
    event_id: str
    detail: str | None = None
    recorded: int | None = None


class OrderOut(BaseModel):
    order_id: str
    customer_id: str
    status: str
    lines: list[LineOut]
    total_cents: int | None
    currency: str
    payment: dict[str, object] | None
    shipment: dict[str, object] | None
    cancel_reason: str | None
    cancel_detail: str | None
    cancel_requested: bool = Field(description="a cancel of the confirmed order waits for shipping: it becomes "
                                               "CANCELLED once the shipment is stopped, or SHIPPED if it had left")
    placed_at: int
    deadline: int
    history: list[HistoryOut]


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None


class ProductOut(BaseModel):
    sku: str
    name: str
    unit_price_cents: int
    currency: str
    active: bool


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None


class StockOut(BaseModel):
    sku: str
    on_hand: int
    reserved: int
    available: int
    adjusted: int
    sold: int
    restocked: int


class AdjustmentOut(BaseModel):
    sku: str
    key: str
    event_id: str
    stock: StockOut


class CommandAccepted(BaseModel):
    accepted: bool = True
    event_id: str


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    worker: int
    #: Whether this worker's API reaches Kafka (commands can be sent).
    kafka: bool
    recovered: bool
    rebalancing: bool
    assigned: list[int]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


# --- Analytics, the live stream, the timeline ----------------------------------------------------------------

def _written_time(value: object) -> object:
    """A time as ISO 8601 text only: a number that is no whole number of milliseconds (``1.5``, ``1e3``,
    ``1796206269.0``) is refused, where pydantic would read it as epoch seconds."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
        raise ValueError("should be whole epoch milliseconds or an ISO 8601 time")
    return value


#: A query's time: epoch milliseconds (a whole number) or an ISO 8601 time.
QueryTime = int | Annotated[datetime, BeforeValidator(_written_time)]


class WindowRangeQuery(_Body):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: QueryTime | None = Field(
        default=None, alias="from", examples=["2026-11-25T17:00:00Z"],
        description="windows starting at or after this time: epoch milliseconds or ISO 8601 (UTC unless it says "
                    "otherwise); default an hour ago")
    to: QueryTime | None = Field(default=None, description="windows starting before this time (none when it "
                                                                  "is not after `from`); default no end")


class TopSkusQuery(WindowRangeQuery):
    limit: int = Field(default=10, ge=1, le=1000, description="SKUs per window, best first")


class WindowsMeta(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: int = Field(alias="from")
    to: int | None
    late_events: int = Field(description="events that came after their window had closed (in no window)")
    allowed_lateness_ms: int
    watermark: int | None = Field(description="the slowest partition's event time; null until every partition "
                                              "has one")


class WindowOut(BaseModel):
    window_start: int
    window_end: int
    final: bool = Field(description="closed on every partition: this count will not change")


class RevenueWindowOut(WindowOut):
    currency: str
    revenue_cents: int
    orders: int
    late_revenue_cents: int = Field(description="what confirmations that came after the window had closed would "
                                                "have added (not in revenue_cents): revenue_cents + "
                                                "late_revenue_cents is every confirmed total of the window")
    late_orders: int = Field(description="how many confirmations came after the window had closed")


class RevenueOut(WindowsMeta):
    windows: list[RevenueWindowOut]


class SkuUnitsOut(BaseModel):
    sku: str
    units: int


class TopSkusWindowOut(WindowOut):
    skus: list[SkuUnitsOut]


class TopSkusOut(WindowsMeta):
    windows: list[TopSkusWindowOut]


class OutcomesWindowOut(WindowOut):
    confirmed: int
    cancelled: int
    cancelled_by_reason: dict[str, int]


class OutcomesOut(WindowsMeta):
    windows: list[OutcomesWindowOut]


class StreamQuery(_Body):
    token: str | None = Field(default=None, max_length=4096,
                              description="the admin JWT, for clients that cannot set headers (EventSource)")


class TimelineStepOut(BaseModel):
    event: str
    event_id: str
    at: int = Field(description="event time")
    detail: str | None
    recorded_at: int | None = Field(description="when this worker applied the step; for a step it no longer "
                                    "remembers (after a restart), when the message that made it was written to "
                                    "Kafka; unknown for an order stored before streamcart kept that")
    since_placed_ms: int | None
    stage_ms: int | None


class TimelineOut(BaseModel):
    order_id: str
    status: str
    customer_id: str
    total_cents: int | None
    currency: str
    cancel_reason: str | None
    placed_at: int
    steps: list[TimelineStepOut]
