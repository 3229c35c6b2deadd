import pytest
from domain_builders import make

from schemas.messages import (
    NotificationFailed,
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderEvent,
    OrderPlaced,
    OrderShipped,
    PricedLine,
)
from streamcart.domain.notifications import Channel, Contact, Template, failed, noted, plan, sent, split

EVERYWHERE = Contact(webhook_url="https://shop.example/hook", email="ann@example.com", phone="+4917000000")

CONFIRMED = make(OrderConfirmed, order_id="o-1", customer_id="c-1",
                 lines=(PricedLine(sku="A", quantity=1, unit_price_cents=500),), total_cents=500, currency="EUR",
                 authorization_id="auth-1")
CANCELLED = make(OrderCancelled, order_id="o-1", customer_id="c-1", reason="timeout")
SHIPPED = make(OrderShipped, order_id="o-1", customer_id="c-1", tracking_id="trk-1")


@pytest.mark.parametrize(("event", "template", "channels"), [
    (CONFIRMED, Template.ORDER_CONFIRMED, [Channel.WEBHOOK, Channel.EMAIL]),
    (CANCELLED, Template.ORDER_CANCELLED, [Channel.WEBHOOK, Channel.EMAIL, Channel.SMS]),
    (SHIPPED, Template.SHIPMENT_DISPATCHED, [Channel.WEBHOOK, Channel.EMAIL, Channel.SMS]),
], ids=["confirmed", "cancelled", "shipped"])
def test_each_order_outcome_is_notified_with_its_template_on_its_channels(event: OrderEvent, template, channels):
    notifications = plan(event, EVERYWHERE)
    assert [n.channel for n in notifications] == channels
    assert {n.template for n in notifications} == {template}
    assert {(n.customer_id, n.order_id) for n in notifications} == {("c-1", "o-1")}


def test_channels_the_customer_has_no_address_for_are_skipped():
    notifications = plan(CANCELLED, Contact(webhook_url="https://shop.example/hook"))
    assert [(n.channel, n.address) for n in notifications] == [(Channel.WEBHOOK, "https://shop.example/hook")]
    assert plan(CANCELLED, Contact()) == ()


def test_a_replayed_give_up_is_planned_for_its_own_channel_alone():
    (only,) = plan(CANCELLED, EVERYWHERE, only=Channel.SMS)
    assert only == next(n for n in plan(CANCELLED, EVERYWHERE) if n.channel == Channel.SMS)
    assert plan(CANCELLED, Contact(email="ann@example.com"), only=Channel.SMS) == ()


def test_events_that_are_not_outcomes_notify_nobody():
    placed = make(OrderPlaced, order_id="o-1", customer_id="c-1", lines=(), currency="EUR", deadline=1)
    assert plan(placed, EVERYWHERE) == ()


def test_the_payload_carries_what_the_customer_needs_to_know():
    assert plan(CONFIRMED, EVERYWHERE)[0].payload == {"order_id": "o-1", "total_cents": 500, "currency": "EUR"}
    assert plan(CANCELLED, EVERYWHERE)[0].payload == {"order_id": "o-1", "reason": "timeout", "detail": None}
    assert plan(SHIPPED, EVERYWHERE)[0].payload == {"order_id": "o-1", "tracking_id": "trk-1"}


def test_idempotency_keys_are_stable_per_event_and_channel():
    first, again = plan(CONFIRMED, EVERYWHERE), plan(CONFIRMED, EVERYWHERE)
    assert [n.idempotency_key for n in first] == [n.idempotency_key for n in again]
    assert len({n.idempotency_key for n in first}) == len(first)


def test_outcome_events_are_derived_from_the_event_and_channel():
    webhook = plan(SHIPPED, EVERYWHERE)[0]
    ok = sent(webhook, attempts=2)
    gave_up = failed(webhook, attempts=5, reason="HTTP 500")
    assert isinstance(ok, NotificationSent) and isinstance(gave_up, NotificationFailed)
    assert (ok.key, ok.channel, ok.template, ok.attempts) == ("c-1", Channel.WEBHOOK, Template.SHIPMENT_DISPATCHED, 2)
    assert (gave_up.reason, gave_up.attempts) == ("HTTP 500", 5)
    assert ok.causation_id == gave_up.causation_id == SHIPPED.event_id
    assert sent(webhook, attempts=2) == ok
    assert ok.event_id != gave_up.event_id


def test_nothing_delivered_yet_leaves_every_planned_notification_to_deliver():
    planned = plan(CANCELLED, EVERYWHERE)
    assert split(planned, None) == (planned, ())


def test_a_redelivered_event_delivers_only_what_was_not_delivered_and_reports_the_rest_as_the_first_time():
    webhook, email, sms = plan(CANCELLED, EVERYWHERE)
    delivered = noted(noted(None, webhook, attempts=3), sms, attempts=1)
    pending, again = split(plan(CANCELLED, EVERYWHERE), delivered)
    assert pending == (email,)
    assert again == (sent(webhook, attempts=3), sent(sms, attempts=1))  # the same events, ids and attempts


def test_everything_delivered_notifies_nobody_again():
    planned = plan(CONFIRMED, EVERYWHERE)
    delivered = None
    for notification in planned:
        delivered = noted(delivered, notification, attempts=1)
    assert split(planned, delivered) == ((), tuple(sent(n, attempts=1) for n in planned))


def test_what_another_event_of_the_order_delivered_does_not_stop_this_ones_notifications():
    delivered = noted(None, plan(CONFIRMED, EVERYWHERE)[1], attempts=1)  # the confirmation's email
    assert delivered.order_id == "o-1"
    assert split(plan(SHIPPED, EVERYWHERE), delivered) == (plan(SHIPPED, EVERYWHERE), ())


def test_a_replayed_give_up_is_delivered_when_the_other_channels_were():
    webhook, email = plan(CONFIRMED, EVERYWHERE)
    delivered = noted(None, webhook, attempts=1)  # the email gave up: dead-lettered, not noted
    assert split(plan(CONFIRMED, EVERYWHERE, only=Channel.EMAIL), delivered) == ((email,), ())
    # Replayed again once it was delivered, it is not sent twice.
    assert split(plan(CONFIRMED, EVERYWHERE, only=Channel.EMAIL), noted(delivered, email, attempts=2)) == (
        (), (sent(email, attempts=2),))
