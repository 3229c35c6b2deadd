"""The dead-letter topic read from outside: letters, selections, and which of them may be replayed now (an order
the workers no longer hold is never acted on again), as `streamcart dlq replay` decides and reports it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import typer
from confluent_kafka import KafkaError, KafkaException

from schemas.codec import Codec
from schemas.errors import RegistryUnavailable
from schemas.messages import (
    CapturePayment,
    CommitStock,
    Message,
    OrderCancelled,
    OrderLine,
    PlaceOrder,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    UpdateShipment,
    UpsertProduct,
    VoidPayment,
)
from schemas.registry import InMemoryRegistry
from streamcart import cli
from streamcart.commands import (
    MAYBE_DELIVERED,
    CommandSender,
    claim_record,
    mark_record,
    note_replay,
    release_record,
)
from streamcart.dead_letters import (
    CLAIM_TTL_MS,
    FLOWS,
    Claim,
    ConnectHeader,
    DeadLetter,
    DlqHeader,
    Limits,
    OrderSeen,
    ReplayLog,
    Selection,
    SinkLetter,
    in_log_order,
    parse_age,
    plan_replays,
    replay_of,
    replay_refusal,
    replay_route,
    replayed_before,
    superseded,
)
from streamcart.domain.shipping import SHIPMENT_CANCELLED
from streamcart.settings import Settings

DAY_MS = 86_400_000
NOW_MS = 100 * DAY_MS
#: The default settings: orders forgotten a week after they settle, Idempotency-Keys remembered a day.
LIMITS = Limits(retention_ms=7 * DAY_MS, idempotency_ttl_ms=DAY_MS, saga_timeout_ms=30_000)
STORED = OrderSeen(status="PENDING")
NOT_STORED = OrderSeen()


@pytest.fixture(scope="module")
def codec() -> Codec:
    codec = Codec(InMemoryRegistry())
    codec.prepare()
    return codec


def place(order_id: str = "o-1", *, occurred_at: int = NOW_MS - DAY_MS) -> PlaceOrder:
    return PlaceOrder(event_id=f"e-{order_id}", occurred_at=occurred_at, causation_id="c", correlation_id=order_id,
                      order_id=order_id, customer_id="cust", lines=(OrderLine(sku="A", quantity=1),),
                      currency="EUR", payment_token="tok_approve")


def reserve(order_id: str = "o-1") -> ReserveStock:
    return ReserveStock(event_id=f"r-{order_id}", occurred_at=NOW_MS - DAY_MS, causation_id="c",
                        correlation_id=order_id, sku="A", order_id=order_id, quantity=1, currency="EUR")


def product() -> UpsertProduct:
    return UpsertProduct(event_id="p", occurred_at=1, causation_id="p", correlation_id="p", sku="A", name="A",
                         unit_price_cents=100, currency="EUR", active=True)


def failure(*, flow: str = "orders", topic: str = "commerce.commands.orders", partition: int = 3, offset: int = 41,
            error: str = "RuntimeError", failed_at: int = NOW_MS - 1000, why: str = "it broke",
            **more: str) -> list[tuple[str, bytes]]:
    """The headers a flow puts on what it dead-letters, after the record's own."""
    return [("traceparent", b"00-abc-def-01"), (DlqHeader.SOURCE_TOPIC, topic.encode()),
            (DlqHeader.SOURCE_PARTITION, str(partition).encode()), (DlqHeader.SOURCE_OFFSET, str(offset).encode()),
            (DlqHeader.ERROR_CLASS, error.encode()), (DlqHeader.ERROR_MESSAGE, why.encode()),
            (DlqHeader.FLOW, flow.encode()), (DlqHeader.FAILED_AT, str(failed_at).encode()),
            *((k, v.encode()) for k, v in more.items())]


def letter(codec: Codec, message: Message | None, *, position: tuple[int, int] = (0, 7), **headers: Any) -> DeadLetter:
    value = codec.encode(message) if message is not None else b"not avro at all"
    key = message.key.encode() if message is not None else b"k"
    return DeadLetter.read(*position, key, value, failure(**headers), codec.decode)


def test_a_dead_letter_names_where_it_came_from_why_and_what_it_was(codec):
    read = letter(codec, place(), flow="orders", topic="commands.orders", partition=3, offset=41)
    assert (read.source_topic, read.source_partition, read.source_offset) == ("commands.orders", 3, 41)
    assert (read.flow, read.error_class, read.error, read.failed_at_ms) == ("orders", "RuntimeError", "it broke",
                                                                            NOW_MS - 1000)
    assert read.message == place() and read.order_id == "o-1" and read.summary == "PlaceOrder o-1"
    assert read.position == "0:7" and read.replay_of is None
    assert read.as_json()["message"]["order_id"] == "o-1"


def test_a_value_that_does_not_decode_is_a_letter_that_says_why(codec):
    read = letter(codec, None)
    assert read.message is None and read.order_id is None
    assert read.summary.startswith("undecodable: MalformedMessage")


def test_a_record_too_large_for_the_dead_letter_topic_is_kept_cut_and_never_replayed(codec):
    from agents.runtime import DEAD_LETTER_FRAMING_BYTES, fitting_dead_letter
    from streamcart.topics import DEAD_LETTER_MAX_BYTES

    headers = dict(failure())
    whole = b"x" * 1_000_005  # as large as the broker takes on any topic by default: kept whole
    assert fitting_dead_letter(b"k", whole, headers) is whole and DlqHeader.VALUE_CUT not in headers
    assert fitting_dead_letter(b"k", None, headers) is None  # a tombstone's letter has no value either
    huge = b"y" * (DEAD_LETTER_MAX_BYTES + 10)  # a source topic set to take larger records than the DLQ
    cut = fitting_dead_letter(b"k", huge, headers)
    assert cut is not None and huge.startswith(cut)
    framed = len(b"k") + len(cut) + sum(len(name) + len(raw) for name, raw in headers.items())
    room = DEAD_LETTER_MAX_BYTES - DEAD_LETTER_FRAMING_BYTES
    assert room - 100 <= framed <= room
    assert headers[DlqHeader.VALUE_CUT] == str(len(huge)).encode()
    read = DeadLetter.read(0, 7, b"k", cut, list(headers.items()), codec.decode)
    assert read.unreplayable is not None and str(len(huge)) in read.unreplayable
    assert letter(codec, place()).unreplayable is None


def test_the_dead_letter_topic_takes_what_a_worker_sends_and_more_than_a_record_the_broker_takes_elsewhere(tmp_path):
    from agents.app import create_faust_app
    from streamcart.settings import Settings
    from streamcart.topics import DEAD_LETTER_MAX_BYTES, topic_specs

    settings = Settings(home=tmp_path)
    dlq = next(spec for spec in topic_specs(settings) if spec.name == "commerce.dlq")
    assert int(dlq.config["max.message.bytes"]) == DEAD_LETTER_MAX_BYTES > 1_048_588  # Kafka's default limit
    assert create_faust_app(settings, store="memory://").conf.producer_max_request_size == DEAD_LETTER_MAX_BYTES


def test_a_number_header_that_int_would_refuse_is_no_number_not_a_crash_of_the_listing(codec):
    """``"²".isdigit()`` is true and ``int("²")`` fails: one such letter hid the whole topic behind a traceback."""
    odd = letter(codec, place(), failed_at="\u00b2", partition="\u00b2", offset="\u0663")  # type: ignore[arg-type]
    assert (odd.failed_at_ms, odd.source_partition, odd.source_offset) == (None, None, None)
    assert odd.unreplayable is not None
    with pytest.raises(typer.BadParameter):
        cli._position("\u00b2:1", "POSITION")


def test_an_unreachable_registry_is_an_error_not_an_undecodable_letter():
    def unreachable(value: bytes | None) -> Message:
        raise RegistryUnavailable("registry down")

    with pytest.raises(RegistryUnavailable):
        DeadLetter.read(0, 0, b"k", b"v", failure(), unreachable)


def test_a_selection_matches_by_flow_channel_error_topic_order_position_and_age(codec):
    webhook = letter(codec, place("o-1"), flow="notifications.webhook", topic="events.orders", error="DeliveryFailed")
    orders = letter(codec, place("o-2"), position=(1, 9), failed_at=NOW_MS - 3 * DAY_MS)
    assert webhook in Selection(flows=frozenset({"notifications"}))
    assert webhook in Selection(flows=frozenset({"notifications.webhook"}))
    assert webhook not in Selection(flows=frozenset({"notifications.email"}))
    assert orders not in Selection(flows=frozenset({"notifications"}))
    assert webhook in Selection(error_classes=frozenset({"DeliveryFailed"}))
    assert orders not in Selection(error_classes=frozenset({"DeliveryFailed"}))
    assert orders in Selection(topics=frozenset({"commerce.commands.orders"}))
    assert orders not in Selection(topics=frozenset({"orders"}))
    assert orders in Selection(order_id="o-2") and orders not in Selection(order_id="o-1")
    assert orders in Selection(positions=frozenset({"1:9"})) and webhook not in Selection(positions=frozenset({"1:9"}))
    assert webhook in Selection(since_ms=NOW_MS - DAY_MS) and orders not in Selection(since_ms=NOW_MS - DAY_MS)
    assert Selection().empty and orders in Selection()


def test_a_mistyped_error_class_that_matches_nothing_is_told_with_the_classes_there_are(codec):
    letters = [letter(codec, place("o-1"), error="DeliveryFailed"), letter(codec, place("o-2"), error="FlowError")]
    read = cli._Letters([], ReplayLog(), {}, letters)
    assert read.none_match(Selection(error_classes=frozenset({"FlowErorr"})), "dead letters") == (
        "no dead letters match: no letter failed with FlowErorr (error classes there: DeliveryFailed, FlowError)")
    # A class that is there but not with the rest of the selection: nothing to correct.
    assert read.none_match(Selection(error_classes=frozenset({"FlowError"}), order_id="o-9"),
                           "dead letters") == "no dead letters match"
    assert read.none_match(Selection(), "dead letters") == "no dead letters"
    nothing_read = cli._Letters([], ReplayLog(), {})
    assert nothing_read.none_match(Selection(error_classes=frozenset({"X"})), "dead letters").endswith(
        "(error classes there: none)")


def test_an_orders_letter_that_does_not_decode_is_selected_by_its_key_where_its_topic_is_keyed_by_the_order(codec):
    undecodable = DeadLetter.read(0, 7, b"o-1", b"not avro at all", failure(topic="commerce.events.payments"),
                                  codec.decode)
    assert undecodable.order_id is None and undecodable in Selection(order_id="o-1")
    assert undecodable not in Selection(order_id="o-2")
    by_sku = DeadLetter.read(0, 8, b"o-1", b"not avro at all", failure(topic="commerce.commands.inventory"),
                             codec.decode)
    assert by_sku not in Selection(order_id="o-1")  # keyed by SKU: its key is no order


def test_the_cli_selects_a_topic_by_its_name_with_or_without_the_stacks_prefix(monkeypatch):
    monkeypatch.delenv("STREAMCART_TOPIC_PREFIX", raising=False)
    assert cli._selection(None, None, ["commands.orders"], None, None).topics == {"commands.orders",
                                                                                  "commerce.commands.orders"}
    assert cli._selection(None, None, ["commerce.dlq"], None, None).topics == {"commerce.dlq"}


def test_a_letter_of_an_order_the_workers_hold_may_be_replayed(codec):
    assert replay_refusal(letter(codec, reserve()), order=STORED, now_ms=NOW_MS, limits=LIMITS) is None


def test_a_letter_of_no_order_may_be_replayed(codec):
    assert replay_refusal(letter(codec, product()), order=None, now_ms=NOW_MS, limits=LIMITS) is None


def test_a_stock_message_of_an_order_not_stored_is_kept_for_it_would_hold_stock_for_nobody(codec):
    refusal = replay_refusal(letter(codec, reserve()), order=NOT_STORED, now_ms=NOW_MS, limits=LIMITS)
    assert refusal is not None and "order o-1 is not stored" in refusal and "ReserveStock" in refusal


@pytest.mark.parametrize("status", ["CANCELLED", "DELIVERED"])
def test_a_command_for_a_settled_order_is_kept_for_it_would_reopen_it(codec, status):
    refusal = replay_refusal(letter(codec, reserve()), order=OrderSeen(status=status), now_ms=NOW_MS, limits=LIMITS)
    assert refusal is not None and f"is {status}" in refusal


ENVELOPE = {"event_id": "s-1", "occurred_at": NOW_MS - DAY_MS, "causation_id": "c", "correlation_id": "o-1"}
VOID = VoidPayment(**ENVELOPE, order_id="o-1", reason="timeout")
REFUND = RefundPayment(**ENVELOPE, order_id="o-1", amount_cents=500, currency="EUR", reason="customer_request")
CAPTURE = CapturePayment(**ENVELOPE, order_id="o-1", authorization_id="auth-1", amount_cents=500, currency="EUR")
RELEASE = ReleaseStock(**ENVELOPE, sku="A", order_id="o-1", reason="timeout")
RESTOCK = RestockItems(**ENVELOPE, sku="A", order_id="o-1")
COMMIT = CommitStock(**ENVELOPE, sku="A", order_id="o-1")


def seen(status: str, payment: str | None, line: str) -> OrderSeen:
    return OrderSeen(status=status, payment=payment, lines={"A": line})


#: (command, the settled order as the API shows it, whether the replay may go): a settled order's owed steps go
#: (a void, capture or refund the gateway could not do for 15 minutes is dead-lettered for a person to replay);
#: one done already, or one that is no step of that outcome (a capture of a cancelled order), is kept.
OWED = [
    (VOID, seen("CANCELLED", "void_requested", "released"), True),
    (VOID, seen("CANCELLED", "declined", "released"), True),  # a void by key: the gateway may have authorized it
    (VOID, seen("CANCELLED", "voided", "released"), False),
    (REFUND, seen("CANCELLED", "refund_requested", "restocked"), True),
    (REFUND, seen("CANCELLED", "refunded", "restocked"), False),
    (RELEASE, seen("CANCELLED", "declined", "reserved"), True),
    (RELEASE, seen("CANCELLED", "declined", "released"), False),
    (RESTOCK, seen("CANCELLED", "refund_requested", "committed"), True),
    (RESTOCK, seen("CANCELLED", "refunded", "restocked"), False),
    (CAPTURE, seen("DELIVERED", "authorized", "committed"), True),
    (CAPTURE, seen("DELIVERED", "captured", "committed"), False),
    (COMMIT, seen("DELIVERED", "captured", "reserved"), True),
    (COMMIT, seen("DELIVERED", "captured", "committed"), False),
    (CAPTURE, seen("CANCELLED", "refund_requested", "committed"), False),  # never charge a cancelled order
    (REFUND, seen("DELIVERED", "captured", "committed"), False),
    (RELEASE, seen("DELIVERED", "captured", "committed"), False),
]


@pytest.mark.parametrize(("command", "order", "goes"), OWED,
                         ids=[f"{type(c).__name__}-{o.status}-{o.payment}-{o.lines['A']}" for c, o, _ in OWED])
def test_a_settled_order_gets_a_replay_of_a_step_it_still_owes_and_of_nothing_else(codec, command, order, goes):
    refusal = replay_refusal(letter(codec, command), order=order, now_ms=NOW_MS, limits=LIMITS)
    assert (refusal is None) == goes, refusal
    if not goes:
        assert f"is {order.status}" in refusal


def test_a_dispatch_refused_because_a_cancel_stopped_its_shipment_is_never_replayed(codec):
    """Dead-lettered for a person (the goods may have left while the order was refunded): a replay would only be
    refused again, before or after the order settles."""
    dispatch = UpdateShipment(event_id="u-1", occurred_at=NOW_MS, causation_id="u-1", correlation_id="o-1",
                              order_id="o-1", status="dispatched")
    stopped = letter(codec, dispatch, flow="shipping", topic="commerce.commands.shipping",
                     why=SHIPMENT_CANCELLED)
    assert SHIPMENT_CANCELLED in stopped.error
    for order in (OrderSeen(status="CONFIRMED"), OrderSeen(status="CANCELLED")):
        refusal = replay_refusal(stopped, order=order, now_ms=NOW_MS, limits=LIMITS)
        assert refusal is not None and "a person sorts out" in refusal
    other = letter(codec, dispatch, flow="shipping", topic="commerce.commands.shipping")  # it broke: replayable
    assert replay_refusal(other, order=OrderSeen(status="CONFIRMED"), now_ms=NOW_MS, limits=LIMITS) is None


def test_an_owed_step_of_an_order_not_stored_is_kept_for_nothing_is_owed_any_more(codec):
    refusal = replay_refusal(letter(codec, VOID), order=NOT_STORED, now_ms=NOW_MS, limits=LIMITS)
    assert refusal is not None and "is not stored" in refusal


def test_what_the_api_says_of_an_order_is_read_into_its_payment_and_line_statuses():
    body = {"status": "CANCELLED", "payment": {"status": "refund_requested", "authorization_id": "a"},
            "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 5, "status": "committed"}, "junk"]}
    assert OrderSeen.from_api(body) == OrderSeen(status="CANCELLED", payment="refund_requested",
                                                 lines={"A": "committed"})
    assert OrderSeen.from_api({"status": "PENDING", "payment": None}) == OrderSeen(status="PENDING")


def test_an_event_of_a_settled_order_may_be_replayed_for_a_notification_or_the_warehouse(codec):
    cancelled = OrderCancelled(event_id="x", occurred_at=1, causation_id="x", correlation_id="o-1", order_id="o-1",
                               customer_id="cust", reason="payment_declined")
    assert replay_refusal(letter(codec, cancelled, flow="notifications.webhook"), order=OrderSeen(status="CANCELLED"),
                          now_ms=NOW_MS, limits=LIMITS) is None


def test_a_place_order_of_an_order_not_stored_before_its_deadline_is_replayed_for_it_was_never_placed(codec):
    recent = letter(codec, place(occurred_at=NOW_MS - 29_999))
    assert replay_refusal(recent, order=NOT_STORED, now_ms=NOW_MS, limits=LIMITS) is None


def test_a_place_order_past_its_deadline_is_kept_for_its_order_would_only_time_out(codec):
    late = letter(codec, place(occurred_at=NOW_MS - 90_000))
    refusal = replay_refusal(late, order=NOT_STORED, now_ms=NOW_MS, limits=LIMITS)
    assert refusal is not None and "deadline passed 60 s ago" in refusal and "timed out" in refusal


def test_a_place_order_that_may_have_been_placed_and_forgotten_is_kept(codec):
    # A retry with the same key (and order id) may come a day after the first PlaceOrder: an order placed by the
    # first could be forgotten a week after it, while its retry is only six days old.
    lenient = Limits(retention_ms=7 * DAY_MS, idempotency_ttl_ms=DAY_MS, saga_timeout_ms=30 * DAY_MS)
    old = letter(codec, place(occurred_at=NOW_MS - 6 * DAY_MS))
    refusal = replay_refusal(old, order=NOT_STORED, now_ms=NOW_MS, limits=lenient)
    assert refusal is not None and "144.0 h ago" in refusal and "forgotten" in refusal
    assert replay_refusal(letter(codec, place(occurred_at=NOW_MS - 6 * DAY_MS + 1)), order=NOT_STORED,
                          now_ms=NOW_MS, limits=lenient) is None


def test_an_order_is_surely_not_forgotten_a_retention_less_the_idempotency_ttl_after_a_placement():
    assert Limits(retention_ms=7 * DAY_MS, idempotency_ttl_ms=DAY_MS, saga_timeout_ms=0).forget_safe_ms == 6 * DAY_MS
    assert Limits(retention_ms=DAY_MS, idempotency_ttl_ms=DAY_MS, saga_timeout_ms=0).forget_safe_ms == 0
    assert Limits(retention_ms=0, idempotency_ttl_ms=DAY_MS, saga_timeout_ms=0).forget_safe_ms == DAY_MS


def test_a_letter_whose_order_cannot_be_looked_up_now_is_kept_with_the_reason(codec):
    refusal = replay_refusal(letter(codec, reserve()), order=OrderSeen(unknown="the API answered 503"), now_ms=NOW_MS,
                             limits=LIMITS)
    assert refusal is not None and "the API answered 503" in refusal


def test_an_undecodable_letter_is_kept_for_its_flow_would_dead_letter_it_again(codec):
    refusal = replay_refusal(letter(codec, None), order=None, now_ms=NOW_MS, limits=LIMITS)
    assert refusal is not None and "does not decode" in refusal


@pytest.mark.parametrize("headers", [
    [(DlqHeader.FLOW, b"orders")],  # no origin
    [(DlqHeader.FLOW, b"warehouse"), (DlqHeader.SOURCE_TOPIC, b"t"), (DlqHeader.SOURCE_PARTITION, b"1")],
    [(DlqHeader.SOURCE_TOPIC, b"t"), (DlqHeader.SOURCE_PARTITION, b"1")],  # no flow
])
def test_a_letter_without_its_origin_or_a_flow_to_take_it_is_never_replayed_even_forced(codec, headers):
    nameless = DeadLetter.read(0, 1, b"o-1", codec.encode(place()), headers, codec.decode)
    assert replay_refusal(nameless, order=STORED, now_ms=NOW_MS, limits=LIMITS) is not None
    assert plan_replays([nameless], order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS,
                        force=True)[0][1] is not None


def test_the_plan_asks_once_per_order_and_force_asks_nothing(codec):
    asked: list[str] = []

    def seen(order_id: str) -> OrderSeen:
        asked.append(order_id)
        return STORED if order_id == "o-1" else NOT_STORED

    letters = [letter(codec, reserve("o-1")), letter(codec, place("o-1")), letter(codec, reserve("o-2")),
               letter(codec, None)]
    plan = plan_replays(letters, order_seen=seen, now_ms=NOW_MS, limits=LIMITS)
    assert [refusal is None for _, refusal in plan] == [True, True, False, False]
    assert asked == ["o-1", "o-2"]
    asked.clear()
    forced = plan_replays(letters, order_seen=seen, now_ms=NOW_MS, limits=LIMITS, force=True)
    assert [refusal for _, refusal in forced] == [None] * 4 and asked == []


def test_a_letter_whose_replay_failed_again_is_kept_even_again_for_the_newer_letter_stands_for_it(codec):
    first = letter(codec, product(), position=(0, 1))
    second = letter(codec, product(), position=(2, 5), **{DlqHeader.REPLAY_OF: "0:1"})
    third = letter(codec, product(), position=(1, 9), **{DlqHeader.REPLAY_OF: "2:5"})
    replaced = superseded([first, second, third])
    assert replaced == {"0:1": "1:9", "2:5": "1:9"}
    plan = plan_replays([first, second, third], order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS,
                        replayed={"0:1": 1, "2:5": 2}, replaced=replaced, again=True, force=True)
    assert [(letter.position, refusal is None) for letter, refusal in plan] == [("0:1", False), ("2:5", False),
                                                                                ("1:9", True)]
    assert "as 1:9" in (plan[0][1] or "")


def test_a_letter_of_a_flow_the_stack_does_not_run_is_kept(codec):
    folded = letter(codec, product(), flow="analytics")
    (only,) = plan_replays([folded], order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS,
                           running=FLOWS - {"analytics"}, force=True)
    assert only[1] == "the analytics flow does not run on this stack"


def test_a_letter_replayed_before_is_kept_unless_again(codec):
    letters = [letter(codec, product(), position=(0, 1), offset=11),
               letter(codec, product(), position=(0, 2), offset=12)]
    replayed = {"0:1": NOW_MS - 60_000}
    plan = plan_replays(letters, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS, replayed=replayed)
    assert [(letter.position, refusal is None) for letter, refusal in plan] == [("0:1", False), ("0:2", True)]
    assert "replayed already" in (plan[0][1] or "") and "--again" in (plan[0][1] or "")
    again = plan_replays(letters, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS, replayed=replayed,
                         again=True)
    assert [refusal for _, refusal in again] == [None, None]


def test_one_message_dead_lettered_twice_by_its_flow_is_replayed_once_as_its_newest_letter(codec):
    """Redelivered after a crash between its letter and the commit, a message is dead-lettered twice; a replay that
    failed twice leaves two letters of it too. Each is a letter, but one message: sent once (a notification
    twice otherwise). Another flow's letter of the same record, or another record, is its own."""
    first = letter(codec, place("o-1"), position=(0, 1), offset=41)
    redelivered = letter(codec, place("o-1"), position=(0, 2), offset=41)
    other_flow = letter(codec, place("o-1"), position=(0, 3), offset=41, flow="notifications.webhook")
    other_record = letter(codec, place("o-2"), position=(0, 4), offset=42)
    replays = [letter(codec, place("o-3"), position=(1, n), offset=70 + n,
                      **{DlqHeader.REPLAY_OF: "0:9", DlqHeader.REPLAY_POSITION: "43"}) for n in (5, 6)]
    plan = plan_replays([first, redelivered, other_flow, other_record, *replays], order_seen=lambda _: STORED,
                        now_ms=NOW_MS, limits=LIMITS, force=True)
    assert [(read.position, refusal) for read, refusal in plan] == [
        ("0:1", "the same message as a newer letter, 0:2, which stands for it"), ("0:2", None), ("0:3", None),
        ("0:4", None), ("1:5", "the same message as a newer letter, 1:6, which stands for it"), ("1:6", None)]
    assert all(replayed_before(refusal) for _, refusal in plan if refusal is not None)
    # The older letter went before (`--at 0:1`, or a selection that left the newer out): the newer does not go.
    again = plan_replays([first, redelivered], order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS,
                         force=True, replayed={"0:1": NOW_MS - 1_000})
    assert [refusal is None for _, refusal in again] == [False, False]
    assert (again[1][1] or "").startswith("replayed already as 0:1")


def test_a_letter_replayed_already_as_another_letter_of_its_message_is_skipped_whatever_the_selection(codec, capsys):
    """2:0 went; 2:3 is its message redelivered, failed later. `--flow X --order O` (both selected) said 2:3 went as
    2:0, but `--at 2:3` (2:3 alone) sent it again: the plan saw only the letters selected."""
    went = letter(codec, product(), position=(2, 0), offset=41, failed_at=NOW_MS - 5_000)
    redelivered = letter(codec, product(), position=(2, 3), offset=41, failed_at=NOW_MS - 1_000)
    every, replayed = [went, redelivered], {"2:0": NOW_MS - 2_000}
    for selected in ([went, redelivered], [redelivered]):
        plan = plan_replays(selected, every=every, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS,
                            replayed=replayed)
        assert (plan[-1][1] or "").startswith("replayed already as 2:0"), plan
    # Not replayed yet: the newest letter stands for its message; when it is not selected, the older one is kept
    # (not counted as done) saying which to replay.
    (only,) = plan_replays([went], every=every, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS)
    assert only[1] == "a newer letter of the same message, 2:3, stands for it: replay that one (--at 2:3)"
    assert not replayed_before(only[1])
    both = plan_replays([went, redelivered], every=every, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS)
    assert both[0][1] == "the same message as a newer letter, 2:3, which stands for it" and both[1][1] is None
    # So does the command.
    topic = FakeReplaysTopic()
    topic.records.append(mark_record(went, NOW_MS - 2_000))
    sender = FakeSender(topic=topic)
    report = cli.replay_dead_letters([redelivered], FakeApi(set()), Settings(), every=every, sender=sender)
    assert (report.sent, report.already, sender.replays) == (0, 1, [])
    assert "2:3 UpsertProduct A (orders: RuntimeError): replayed already as 2:0" in capsys.readouterr().out


def test_a_replay_since_a_while_reads_every_letter_and_selects_the_recent_ones(codec, monkeypatch):
    """`--since` read only the letters failed since: an older letter of the same message, replayed, was not seen."""
    import streamcart.commands

    old = letter(codec, product(), position=(2, 0), offset=41, failed_at=NOW_MS - DAY_MS)
    recent = letter(codec, product(), position=(2, 3), offset=41, failed_at=NOW_MS - 1_000)
    asked: list[int | None] = []

    def read_dead_letters(settings: Any, codec: Any, *, since_ms: int | None = None, **_: Any) -> list[DeadLetter]:
        asked.append(since_ms)
        return [found for found in (old, recent) if since_ms is None or (found.failed_at_ms or 0) >= since_ms]

    monkeypatch.setattr(streamcart.commands, "read_dead_letters", read_dead_letters)
    monkeypatch.setattr(streamcart.commands, "read_replays", lambda settings: ReplayLog())
    selection = Selection(since_ms=NOW_MS - 60_000)
    read = cli._dead_letters(Settings(), codec, selection, whole=True)
    assert asked == [None] and read.selected == [recent] and read.every == [old, recent]
    listed = cli._dead_letters(Settings(), codec, selection)  # a listing needs only what it shows
    assert asked[1] == NOW_MS - 120_000 and listed.selected == [recent]


def test_a_letter_naming_a_topic_or_partition_this_stack_does_not_have_is_kept_even_forced(codec):
    """librdkafka raised on a partition beyond its range (the command ended in a traceback, earlier records queued
    and never marked); a topic that does not exist waited out the timeout."""
    topics = {"commerce.commands.orders": 8}
    letters = [letter(codec, place("o-1"), partition=3), letter(codec, place("o-2"), partition=99_999_999_999),
               letter(codec, place("o-3"), topic="other.commands.orders"), letter(codec, place("o-4"), partition=8)]
    plan = plan_replays(letters, order_seen=lambda _: STORED, now_ms=NOW_MS, limits=LIMITS, force=True,
                        topics=topics)
    assert [refusal is None for _, refusal in plan] == [True, False, False, False]
    assert "is no partition of a topic of this stack" in (plan[1][1] or "")


def test_a_replay_goes_to_its_partition_with_its_own_headers_marked_for_the_flow_that_failed(codec):
    read = letter(codec, place(), position=(5, 12), flow="notifications.webhook", topic="events.orders",
                  partition=6, **{DlqHeader.REPLAY_OF: "2:3", DlqHeader.REPLAY_FLOW: "orders"})
    replay = replay_of(read)
    assert (replay.topic, replay.partition, replay.key, replay.value) == ("events.orders", 6, read.key, read.value)
    assert replay.headers == (("traceparent", b"00-abc-def-01"), (DlqHeader.REPLAY_FLOW, b"notifications.webhook"),
                              (DlqHeader.REPLAY_OF, b"5:12"), (DlqHeader.REPLAY_POSITION, b"41"))


def test_a_replay_says_where_its_message_first_was_in_the_log_even_when_a_replay_failed_again(codec):
    """A flow that orders by position (the catalog's updates) puts it back in its place, not at the log's end."""
    first = letter(codec, product(), topic="commands.catalog", partition=2, offset=41)
    assert dict(replay_of(first).headers)[DlqHeader.REPLAY_POSITION] == b"41"
    again = letter(codec, product(), topic="commands.catalog", partition=2, offset=90,
                   **{DlqHeader.REPLAY_OF: "0:7", DlqHeader.REPLAY_POSITION: "41"})
    marks = [(k, v) for k, v in replay_of(again).headers if k == DlqHeader.REPLAY_POSITION]
    assert marks == [(DlqHeader.REPLAY_POSITION, b"41")]


def test_a_replay_is_for_the_flow_and_the_channel_that_failed():
    assert replay_route("notifications.webhook") == ("notifications", "webhook")
    assert replay_route("orders") == ("orders", None)


@pytest.mark.parametrize(("text", "ms"), [("90s", 90_000), ("15m", 900_000), ("2h", 7_200_000), ("1.5d", 129_600_000)])
def test_an_age_reads_with_its_unit(text, ms):
    assert parse_age(text) == ms


@pytest.mark.parametrize("text", ["", "15", "m", "2w", "-1h", "1.2.3h"])
def test_an_age_without_a_known_unit_is_refused(text):
    with pytest.raises(ValueError, match="such as 90s"):
        parse_age(text)


class FakeApi:
    """GET /v1/orders/{id}: 200 for the orders it holds, 404 for the others; or a connection error."""

    def __init__(self, orders: set[str], *, down: bool = False) -> None:
        self.orders, self.down = orders, down

    def get(self, path: str) -> tuple[int, object]:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        order_id = path.removeprefix("/v1/orders/")
        return (200, {"order_id": order_id, "status": "PENDING"}) if order_id in self.orders else (404, {"error": {}})

    def send(self, message: Message) -> None:
        raise AssertionError("replays are produced as records, not sent as commands")


class FakeReplaysTopic:
    """The replays topic (one partition): the records written to it, in the order the broker took them."""

    def __init__(self) -> None:
        self.records: list[dict[str, bytes]] = []

    def read(self) -> ReplayLog:
        log = ReplayLog()
        for offset, record in enumerate(self.records):
            note_replay(log, offset, record["key"], record["value"])
        return log


class FakeSender:
    """Records what would be produced, claims and marks on ``topic`` as the real sender writes them; ``refuse``
    names the source partitions the broker does not acknowledge. ``between`` runs once, after the claims are
    written and before they are read back (another run's turn)."""

    def __init__(self, refuse: frozenset[int] = frozenset(), topic: FakeReplaysTopic | None = None,
                 between: Callable[[], object] | None = None) -> None:
        self.replays: list[Any] = []
        self.marked: list[str] = []
        self.released: list[str] = []
        self.refuse = refuse
        self.topic = topic or FakeReplaysTopic()
        self.between = between

    def resend(self, *replays: Any, timeout_s: float = 10.0) -> list[str | None]:
        self.replays.extend(replays)
        return ["broker down" if r.partition in self.refuse else None for r in replays]

    def claim(self, letters: list[DeadLetter], claim: Claim, timeout_s: float = 10.0) -> list[str | None]:
        self.topic.records.extend(claim_record(letter, claim) for letter in letters)
        if self.between is not None:
            self.between, between = None, self.between
            between()
        return [None] * len(letters)

    def release(self, letters: list[DeadLetter], claim: Claim, timeout_s: float = 10.0) -> list[str | None]:
        self.released.extend(letter.position for letter in letters)
        self.topic.records.extend(release_record(letter, claim) for letter in letters)
        return [None] * len(letters)

    def mark_replayed(self, letters: list[DeadLetter], at_ms: int, timeout_s: float = 10.0) -> list[str | None]:
        self.marked.extend(letter.position for letter in letters)
        self.topic.records.extend(mark_record(letter, at_ms) for letter in letters)
        return [None] * len(letters)

    def read_replays(self) -> ReplayLog:
        return self.topic.read()


def test_replay_sends_what_may_go_marks_it_and_reports_what_stays_and_why(codec, capsys):
    sender = FakeSender()
    letters = [letter(codec, reserve("o-1"), position=(0, 1)), letter(codec, reserve("o-2"), position=(0, 2))]
    report = cli.replay_dead_letters(letters, FakeApi({"o-1"}), Settings(), sender=sender)
    out = capsys.readouterr().out
    assert (report.sent, report.already, report.kept, report.failed) == (1, 0, 1, 0)
    assert [dict(r.headers)[DlqHeader.REPLAY_OF] for r in sender.replays] == [b"0:1"] and sender.marked == ["0:1"]
    assert "replayed 0:1 ReserveStock A" in out and "kept 0:2" in out and "order o-2 is not stored" in out
    assert "1 of 2 replayed" in out


def test_a_replay_the_broker_does_not_take_is_reported_and_not_marked(codec, capsys):
    sender = FakeSender(refuse=frozenset({4}))
    letters = [letter(codec, product(), position=(0, 1), partition=3), letter(codec, product(), position=(0, 2),
                                                                               partition=4)]
    report = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), sender=sender)
    assert (report.sent, report.kept, report.failed) == (1, 0, 1) and sender.marked == ["0:1"]
    out = capsys.readouterr().out
    assert "not sent 0:2 UpsertProduct A: broker down" in out and "1 of 2 replayed, 1 not sent" in out


def test_a_letter_replayed_before_is_no_failure_of_the_command(codec, capsys):
    letters = [letter(codec, product(), position=(0, 1), offset=11),
               letter(codec, product(), position=(0, 2), offset=12),
               letter(codec, product(), position=(0, 3), offset=90,
                      **{DlqHeader.REPLAY_OF: "0:2", DlqHeader.REPLAY_POSITION: "12"})]
    topic = FakeReplaysTopic()
    topic.records += [mark_record(letters[0], NOW_MS), mark_record(letters[1], NOW_MS)]
    report = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), replaced={"0:2": "0:3"},
                                     sender=FakeSender(topic=topic))
    assert (report.sent, report.already, report.kept, report.failed) == (1, 2, 0, 0)
    out = capsys.readouterr().out
    assert "0:1 UpsertProduct A (orders: RuntimeError): replayed already" in out
    assert "0:2 UpsertProduct A (orders: RuntimeError): its replay failed again, as 0:3" in out


def webhook_letters(codec: Codec, count: int = 3) -> list[DeadLetter]:
    return [letter(codec, product(), position=(0, n), offset=40 + n, flow="notifications.webhook",
                   topic="commerce.events.orders") for n in range(count)]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("again", [False, True], ids=["first", "again"])
@pytest.mark.parametrize("turn", ["b-done-before-a-claims", "b-between-a-claim-and-read", "b-plans-after-a-claims"])
def test_two_replays_at_once_send_each_letter_once_and_the_other_skips_it_as_no_failure(codec, capsys, turn, again):
    """Each run read the letters unmarked; nothing ordered them between that read and their marks: both sent every
    letter (each webhook called twice), both said all replayed."""
    letters = webhook_letters(codec)
    topic = FakeReplaysTopic()
    if again:  # replayed yesterday: two `--again` at once send it once more, once
        topic.records += [mark_record(found, NOW_MS - DAY_MS) for found in letters]
    before = topic.read()  # what both runs read to plan, if neither had claimed yet
    b = FakeSender(topic=topic)
    reports = {}

    def run_b() -> None:
        replays = None if turn == "b-plans-after-a-claims" else before  # None: reads the topic itself, now
        reports["b"] = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), replays=replays, again=again,
                                               sender=b)

    if turn == "b-done-before-a-claims":
        run_b()
    a = FakeSender(topic=topic, between=None if turn == "b-done-before-a-claims" else run_b)
    reports["a"] = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), replays=before, again=again,
                                           sender=a)

    sent = [dict(replay.headers)[DlqHeader.REPLAY_OF] for replay in a.replays + b.replays]
    assert sorted(sent) == [b"0:0", b"0:1", b"0:2"]
    winner, loser = ("b", "a") if turn == "b-done-before-a-claims" else ("a", "b")
    assert (reports[winner].sent, reports[winner].failed) == (3, 0)
    assert (reports[loser].sent, reports[loser].already, reports[loser].kept, reports[loser].failed) == (0, 3, 0, 0)
    out = capsys.readouterr().out
    if turn == "b-done-before-a-claims":  # b's marks came after a looked
        assert "replayed already by another run since this one looked" in out
    else:
        assert "being replayed by another run" in out


def test_a_claim_older_than_its_ttl_is_of_a_run_that_died_and_does_not_hold_its_letter(codec, capsys):
    (only,) = webhook_letters(codec, 1)
    for age_ms, sends in ((CLAIM_TTL_MS + 10_000, True), (10_000, False)):
        topic = FakeReplaysTopic()
        topic.records.append(claim_record(only, Claim("died", now_ms() - age_ms, seen_to=0)))
        sender = FakeSender(topic=topic)
        report = cli.replay_dead_letters([only], FakeApi(set()), Settings(), sender=sender)
        assert (report.sent, report.failed) == ((1, 0) if sends else (0, 0)), age_ms
        assert (report.already == 0) == sends
    assert "skipped 0:0 UpsertProduct A (notifications.webhook: RuntimeError): being replayed by another run" in (
        capsys.readouterr().out)


def test_a_claim_followed_by_a_mark_holds_its_letter_no_more(codec):
    (only,) = webhook_letters(codec, 1)
    topic = FakeReplaysTopic()
    topic.records += [claim_record(only, Claim("done", now_ms(), seen_to=0)), mark_record(only, now_ms())]
    assert topic.read().holder(only, now_ms()) is None
    sender = FakeSender(topic=topic)
    report = cli.replay_dead_letters([only], FakeApi(set()), Settings(), again=True, sender=sender)
    assert report.sent == 1 and sender.marked == ["0:0"]
    assert cli.replay_dead_letters([only], FakeApi(set()), Settings(), sender=FakeSender(topic=topic)).already == 1


def test_a_claim_holds_only_the_letter_it_names_not_a_new_one_at_its_position(codec):
    (only,) = webhook_letters(codec, 1)
    elsewhere = letter(codec, product(), position=(0, 0), offset=99, flow="notifications.webhook")
    log = ReplayLog()
    log.note_claim(0, "0:0", Claim("other", now_ms(), seen_to=0), elsewhere.identity)
    assert log.holder(only, now_ms()) is None and log.holder(elsewhere, now_ms()) is not None


class FakeProducer:
    """confluent-kafka's Producer as `_deliver` uses it: ``acked`` records are acknowledged at once; the others
    stay queued (``queued``) or in flight until purged."""

    def __init__(self, acked: set[int], queued: set[int]) -> None:
        self.acked, self.queued = acked, queued
        self.callbacks: list[tuple[int, Any]] = []
        self.purged = False

    def produce(self, **record: Any) -> None:
        self.callbacks.append((record["value"], record["on_delivery"]))

    def flush(self, timeout: float) -> int:
        left = 0
        for value, callback in self.callbacks:
            if value in self.acked:
                callback(None, None)
            elif self.purged:
                code = KafkaError._PURGE_QUEUE if value in self.queued else KafkaError._PURGE_INFLIGHT
                callback(KafkaError(code), None)
            else:
                left += 1
        self.callbacks = [(v, c) for v, c in self.callbacks if v not in self.acked and not self.purged]
        return left

    def purge(self, in_queue: bool, in_flight: bool) -> None:
        assert in_queue and in_flight
        self.purged = True


def test_what_the_broker_did_not_acknowledge_in_time_is_purged_and_said_to_be_unsent_or_maybe_written():
    sender = CommandSender.__new__(CommandSender)
    sender.producer = FakeProducer(acked={0}, queued={1})
    outcomes = sender._deliver([{"topic": "t", "value": i} for i in range(3)], timeout_s=0.1)
    assert outcomes[0] is None
    assert outcomes[1] is not None and "Purged" in outcomes[1]  # never left: not sent
    assert outcomes[2] == MAYBE_DELIVERED


def test_a_dry_run_sends_and_marks_nothing(codec, capsys):
    sender = FakeSender()
    report = cli.replay_dead_letters([letter(codec, reserve("o-1"))], FakeApi({"o-1"}), Settings(), dry_run=True,
                                     sender=sender)
    assert report.sent == 0 and sender.replays == [] and sender.marked == [] and sender.topic.records == []
    assert "would replay 0:7 ReserveStock A" in capsys.readouterr().out


def test_an_api_that_cannot_be_reached_keeps_every_letter_of_an_order(codec, capsys):
    sender = FakeSender()
    report = cli.replay_dead_letters([letter(codec, reserve("o-1")), letter(codec, product())],
                                     FakeApi(set(), down=True), Settings(), sender=sender)
    assert report.sent == 1 and [type(codec.decode(r.value)) for r in sender.replays] == [UpsertProduct]
    assert "the API cannot be reached: connection refused" in capsys.readouterr().out


def test_an_order_id_is_asked_about_as_one_path_segment(codec):
    asked: list[str] = []

    class Recording(FakeApi):
        def get(self, path: str) -> tuple[int, object]:
            asked.append(path)
            return 404, None

    weird = reserve("o-1?x=1/..")
    cli.replay_dead_letters([letter(codec, weird)], Recording(set()), Settings(), sender=FakeSender())
    assert asked == ["/v1/orders/o-1%3Fx%3D1%2F.."]


def test_replay_without_a_selection_is_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["dlq", "replay"])
    assert exited.value.code == 2
    assert "name what to replay" in capsys.readouterr().err


class BrokerAway:
    """A consumer whose broker cannot be reached."""

    def list_topics(self, topic: str, timeout: float) -> Any:
        failure = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")
        raise KafkaException(failure)

    def get_watermark_offsets(self, partition: Any, timeout: float) -> Any:
        return self.list_topics("", timeout)

    def close(self) -> None:
        pass


def test_a_broker_that_cannot_be_reached_is_one_clear_error_naming_it(monkeypatch, codec):
    from streamcart import commands

    monkeypatch.setattr(commands, "_reader", lambda settings, purpose: BrokerAway())
    settings = Settings(kafka_port=19999)
    for read in (lambda: commands.read_dead_letters(settings, codec), lambda: commands.stored_order_ids(settings),
                 lambda: commands.read_dead_letter(settings, codec, 0, 0)):
        with pytest.raises(commands.CommandNotSent) as failed:
            read()
        assert "from Kafka at 127.0.0.1:19999 (Failed to get metadata" in str(failed.value)
        assert "is the stack up" in str(failed.value)


def test_a_partition_the_dead_letter_topic_does_not_have_holds_no_letter_and_is_not_blamed_on_the_stack(
        monkeypatch, codec):
    """`dlq show 99:0` said "cannot read … Unknown partition: is the stack up?" with the stack up."""
    from types import SimpleNamespace

    from streamcart import commands

    class EightPartitions:
        def list_topics(self, topic: str, timeout: float) -> Any:
            return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=dict.fromkeys(range(8)))})

        def get_watermark_offsets(self, partition: Any, timeout: float) -> Any:
            raise AssertionError("a partition the topic does not have is not read")

        def close(self) -> None:
            pass

    monkeypatch.setattr(commands, "_reader", lambda settings, purpose: EightPartitions())
    assert commands.read_dead_letter(Settings(), codec, 99, 0) is None


# -- the warehouse's dead letters: rows a Kafka Connect sink could not take --------------------------------------

CONNECT_TRACE = (
    "org.apache.kafka.connect.errors.DataException: Converting byte[] to Kafka Connect data failed due to "
    "serialization error: \n\tat org.apache.kafka.connect.json.JsonConverter.toConnectData(JsonConverter.java:348)\n"
    "Caused by: org.apache.kafka.common.errors.SerializationException: com.fasterxml.jackson.core.JsonParseException: "
    "Unexpected character ('n')\n\tat x\n"
    "Caused by: com.fasterxml.jackson.core.JsonParseException: Unexpected character ('n')\n at [Source: REDACTED]\n"
)


def sink_letter(key: bytes | None = b'{"schema":{},"payload":{"order_id":"o-7","sku":"A"}}', value: bytes = b"{no",
                **changed: str) -> SinkLetter:
    headers = {ConnectHeader.TOPIC: "commerce.warehouse.order_lines", ConnectHeader.PARTITION: "5",
               ConnectHeader.OFFSET: "161", ConnectHeader.CONNECTOR: "streamcart-warehouse-order-lines",
               ConnectHeader.STAGE: "VALUE_CONVERTER",
               ConnectHeader.EXCEPTION_CLASS: "org.apache.kafka.connect.errors.DataException",
               ConnectHeader.EXCEPTION_MESSAGE: "Converting byte[] to Kafka Connect data failed due to "
                                                "serialization error: ",
               ConnectHeader.STACKTRACE: CONNECT_TRACE, "traceparent": "00-abc"} | changed
    return SinkLetter.read_row(0, 3, key, value, [(k, v.encode()) for k, v in headers.items()], 1_000)


def test_a_sink_letter_names_its_row_its_sink_and_the_root_cause_of_its_failure():
    letter = sink_letter()
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "commerce.warehouse.order_lines", 5, 161)
    assert letter.flow == "warehouse:streamcart-warehouse-order-lines"
    assert letter.error_class == "DataException"
    assert letter.error == ("Converting byte[] to Kafka Connect data failed due to serialization error; caused by "
                            "JsonParseException: Unexpected character ('n') (in value_converter)")
    assert letter.failed_at_ms == 1_000 and letter.replay_of is None
    assert letter.order_id == "o-7"
    assert letter.summary == 'order_lines row {"order_id":"o-7","sku":"A"}'


def test_a_sink_letter_without_a_cause_or_a_readable_key_still_reads():
    letter = sink_letter(key=b"not json", **{ConnectHeader.STACKTRACE: "", ConnectHeader.EXCEPTION_MESSAGE: "bad"})
    assert letter.error == "bad (in value_converter)"
    assert letter.order_id is None
    assert letter.summary == "order_lines row b'not json'"
    assert sink_letter(key=None).order_id is None


def test_a_sink_letter_is_selected_by_its_source_topic_its_order_and_its_time():
    letter = sink_letter()
    assert letter in Selection(topics=frozenset({"commerce.warehouse.order_lines"}))
    assert letter not in Selection(topics=frozenset({"commerce.warehouse.orders"}))
    assert letter in Selection(order_id="o-7") and letter not in Selection(order_id="o-8")
    assert letter in Selection(since_ms=1_000) and letter not in Selection(since_ms=1_001)


def test_a_sink_letter_is_never_replayed_even_forced():
    plan = plan_replays([sink_letter()], order_seen=lambda order_id: STORED, now_ms=NOW_MS, limits=LIMITS, force=True)
    assert plan[0][1] is not None and "would fail again" in plan[0][1]


def test_a_sink_letter_as_json_carries_its_row_or_its_raw_value():
    row = sink_letter(value=b'{"schema":{},"payload":{"qty":1}}').as_json()["row"]
    assert row == {"schema": {}, "payload": {"qty": 1}}
    raw = sink_letter(value=b"{no").as_json()
    assert raw["row"] is None and raw["value"] == "{no"
    assert raw["connector"] == "streamcart-warehouse-order-lines"
    # What the table shows and --error / --flow select by; the Java class in full beside it.
    assert raw["error"]["class"] == "DataException" and raw["flow"] == "warehouse:streamcart-warehouse-order-lines"
    assert raw["error"]["java_class"] == "org.apache.kafka.connect.errors.DataException"


def test_the_warehouse_listing_has_no_replayed_column_and_the_flows_listing_has():
    from rich.console import Console

    from streamcart.stack.views import dead_letter_counts, dead_letters_table

    def text(table: Any) -> str:
        console = Console(width=400, record=True)
        console.print(table)
        return console.export_text()

    assert "replayed" not in text(dead_letters_table([sink_letter()], None, total=1, noun="warehouse dead letters"))
    counts = text(dead_letter_counts([sink_letter()], None, noun="warehouse dead letters")).splitlines()
    assert counts[0].rstrip() == "1 warehouse dead letter" and "replayed" not in counts[1]
    assert "replayed" in text(dead_letter_counts([sink_letter()], {}, noun="dead letters"))


def test_a_sink_letter_whose_key_nests_too_deep_or_whose_cause_has_no_message_still_reads():
    deep = b"[" * 100_000
    letter = sink_letter(key=deep, value=deep, **{ConnectHeader.STACKTRACE: "x\nCaused by: a.b.Bare\n"})
    assert letter.order_id is None and letter.summary.startswith("order_lines row b'[[[")
    assert letter.as_json()["row"] is None
    assert letter.error.endswith("; caused by Bare (in value_converter)")


class _Mark:
    """A record of the replays topic as confluent-kafka hands it over."""

    def __init__(self, position: str, value: dict[str, Any], offset: int = 0) -> None:
        self._key, self._value, self._offset = position.encode(), json.dumps(value).encode(), offset

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def test_a_replay_mark_stands_only_for_the_letter_it_was_made_for(codec, monkeypatch):
    """A DLQ topic made again starts its offsets over: its new letter at 0:1 is not the one replayed before."""
    import streamcart.commands

    replayed_one = letter(codec, place("o-1"), position=(0, 1), offset=11)
    newer_at_same_place = letter(codec, place("o-2"), position=(0, 1), offset=77)
    marks = [_Mark("0:1", {"replayed_at_ms": 5, "flow": "orders", "letter": replayed_one.identity}),
             _Mark("0:2", {"replayed_at_ms": 6, "flow": "orders"}, 1)]  # an older version's mark: by position alone

    def read_to_end(settings: Any, topic: str, on_record: Any, **_: Any) -> None:
        for mark in marks:
            on_record(mark)

    monkeypatch.setattr(streamcart.commands, "read_to_end", read_to_end)
    assert streamcart.commands.read_replayed(Settings(), [replayed_one]) == {"0:1": 5, "0:2": 6}
    assert streamcart.commands.read_replayed(Settings(), [newer_at_same_place]) == {"0:2": 6}
    assert replayed_one.identity != newer_at_same_place.identity


def test_replays_go_back_in_the_order_their_messages_were_first_written_not_by_failure_time(codec):
    """Two updates of one key failed on workers whose clocks disagree, or the older one's replay failed again later:
    sent in failure order, the older would land last."""
    newer = letter(codec, place("o-1"), position=(0, 1), offset=50, failed_at=NOW_MS - 5_000)
    older_failed_again = letter(codec, place("o-1"), position=(0, 2), offset=90, failed_at=NOW_MS - 1_000,
                                **{DlqHeader.REPLAY_POSITION: "40"})
    elsewhere = letter(codec, place("o-2"), position=(0, 3), partition=1, offset=10)
    ordered = [found.position for found in in_log_order([newer, older_failed_again, elsewhere])]
    assert sorted(ordered) == ["0:1", "0:2", "0:3"]
    assert ordered.index("0:2") < ordered.index("0:1")  # its first offset, 40, came before 50


@pytest.mark.parametrize("text", ["36501d", "9" * 400 + "d", "1e3d"])
def test_an_age_beyond_a_hundred_years_or_not_a_plain_number_is_refused(text):
    with pytest.raises(ValueError, match=r"at most 100 years|such as 90s"):
        parse_age(text)


def test_a_run_lets_go_of_what_it_did_not_send_so_the_next_run_sends_it_at_once(codec):
    """A run interrupted after its claims (Ctrl-C while sending) kept every letter "being replayed by another run"
    for 5 minutes: a run again at once sent nothing and said all was done."""
    letters = webhook_letters(codec, 2)
    topic = FakeReplaysTopic()

    class Interrupted(FakeSender):
        def resend(self, *replays: Any, timeout_s: float = 10.0) -> list[str | None]:
            raise KeyboardInterrupt

    first = Interrupted(topic=topic)
    with pytest.raises(KeyboardInterrupt):
        cli.replay_dead_letters(letters, FakeApi(set()), Settings(), sender=first)
    assert first.released == ["0:0", "0:1"] and first.marked == []
    again = FakeSender(topic=topic)
    report = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), sender=again)
    assert (report.sent, report.already, again.marked) == (2, 0, ["0:0", "0:1"])

    refused = FakeSender(topic=FakeReplaysTopic(), refuse=frozenset({3}))  # the broker took none of them
    report = cli.replay_dead_letters(letters, FakeApi(set()), Settings(), sender=refused)
    assert (report.sent, report.failed, refused.released) == (0, 2, ["0:0", "0:1"])
    assert refused.topic.read().holder(letters[0], now_ms()) is None  # free for the next run
