"""`streamcart dlq` on the real stack: the dead letters listed with where they came from and why, and a replay that
reaches the one flow (and the one channel) that failed, changes nothing the second time, and never acts on an
order the workers do not hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.messages import ReserveStock
from streamcart import cli
from streamcart.commands import read_dead_letters, read_to_end
from streamcart.dead_letters import DeadLetter, DlqHeader
from streamcart.ids import new_id
from streamcart.partitioning import partition_for
from tests.integration.support import poll, produce, producer, read_topic
from tests.integration.test_api import call, customer, order_body, place, stocked_sku
from tests.integration.test_dashboard import ticks
from tests.integration.test_notifications import hook  # noqa: F401 (a fixture)
from tests.integration.test_saga import Shop, sku


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def letters_of(settings, codec, order_id: str) -> list[DeadLetter]:
    return [letter for letter in read_dead_letters(settings, codec) if letter.order_id == order_id]


def streamcart(settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, against the test stack."""
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "streamcart.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_place_order_a_flow_could_not_handle_is_replayed_once_and_a_second_replay_changes_nothing(
    shop, settings, codec
):
    item = sku()
    shop.product(item, price=700, stock=5)
    order = shop.place_order({item: 2})
    # What the orders flow writes when it fails on a record (agents/runtime.py, dead_letter): say a worker older
    # than the command was handed it.
    partition = partition_for(order.order_id, settings.partitions)
    failed = [(DlqHeader.SOURCE_TOPIC, shop.topics.order_commands.encode()),
              (DlqHeader.SOURCE_PARTITION, str(partition).encode()), (DlqHeader.SOURCE_OFFSET, b"0"),
              (DlqHeader.ERROR_CLASS, b"FlowError"), (DlqHeader.ERROR_MESSAGE, b"unknown command"),
              (DlqHeader.FLOW, b"orders"), (DlqHeader.FAILED_AT, str(int(time.time() * 1000)).encode())]
    produce(producer(settings), shop.topics.dlq, order.order_id.encode(), codec.encode(order), failed)
    assert shop.order(order.order_id) is None

    # Replayed at once: a PlaceOrder replayed after its deadline (15 s here) would only time out, and is kept.
    replayed = streamcart(settings, "dlq", "replay", "--order", order.order_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 of 1 replayed" in replayed.stdout, replayed.stdout
    assert shop.confirmed(order.order_id)["total_cents"] == 1400

    listed = streamcart(settings, "dlq", "list", "--order", order.order_id, "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)
    assert (shown["flow"], shown["error"]["class"], shown["message_type"]) == ("orders", "FlowError", "PlaceOrder")
    assert shown["source"] == {"topic": shop.topics.order_commands, "partition": partition, "offset": 0}
    assert shown["replayed_at_ms"] is not None

    def settled(seen: dict | None) -> bool:  # every step after the confirmation taken: committed, captured, shipped
        return bool(seen and seen["shipment"] and (seen["payment"] or {}).get("status") == "captured"
                    and all(line["status"] == "committed" for line in seen["lines"]))

    confirmed = poll(lambda: settled(o := shop.order(order.order_id)) and o, what="the order's last steps")

    # Replayed once: the same selection does not send it again, and says so (which is no failure).
    again = streamcart(settings, "dlq", "replay", "--order", order.order_id)
    assert again.returncode == 0 and "replayed already" in again.stdout and "0 of 1 replayed" in again.stdout, again

    # Sent again all the same, it is a duplicate PlaceOrder, which the saga absorbs step by step (I5): each flow
    # re-emits what it emitted the first time, with the same event ids, and acts on nothing twice.
    report = cli.replay_dead_letters(letters_of(settings, codec, order.order_id), cli._LiveRemote(settings), settings,
                                     again=True)
    assert report.sent == 1
    echoed = {shop.topics.order_events: ("OrderPlaced", "OrderConfirmed"),
              shop.topics.inventory_events: ("StockReserved", "StockCommitted"),
              shop.topics.payment_events: ("PaymentAuthorized", "PaymentCaptured"),
              shop.topics.shipping_events: ("ShipmentCreated",)}
    for topic, names in echoed.items():
        def twice(records: list, names: tuple[str, ...] = names) -> bool:
            ids = events_of(codec, records, order.order_id)
            return all(len(ids.get(name, [])) >= 2 for name in names)

        ids = events_of(codec, read_topic(settings, topic, until=twice, timeout_s=60), order.order_id)
        assert all(len(set(ids[name])) == 1 for name in names), f"{topic}: the same event ids again: {ids}"
    after = shop.order(order.order_id)
    assert after is not None and after["history"] == confirmed["history"]
    assert [a["idempotency_key"] for a in shop.gateway_authorizations()].count(order.order_id) == 1  # I4
    assert shop.quiet_stock(item)["on_hand"] == 3  # I2: sold once


def events_of(codec, records: list, order_id: str) -> dict[str, list[str]]:
    """The event ids of ``order_id``'s records, by message type."""
    ids: dict[str, list[str]] = {}
    for record in records:
        if record.key() == order_id.encode():
            message = codec.decode(record.value())
            ids.setdefault(type(message).__name__, []).append(message.event_id)
    return ids


def test_a_webhook_give_up_is_replayed_to_the_webhook_alone_once_it_answers(shop, settings, codec, hook):  # noqa: F811
    receiver, url = hook
    receiver.always_fail = True
    email = f"{new_id()}@example.com"
    _, token = customer(settings)
    _, _, placed = place(f"{settings.worker_url(0)}/v1/orders",
                        {**order_body(stocked_sku(shop)), "webhook_url": url, "email": email}, token)
    _, _, order = call(f"{settings.worker_url(0)}/v1/orders/{placed['order_id']}?wait=30", token=token)
    order_id = order["order_id"]
    assert order["status"] == "CONFIRMED"
    given_up = poll(lambda: [letter for letter in letters_of(settings, codec, order_id)
                             if letter.flow == "notifications.webhook"], timeout_s=60, what="the webhook's give-up")
    tried = len(receiver.delivered(order_id, "order_confirmed"))

    receiver.always_fail = False
    receiver.fail_first = False
    report = cli.replay_dead_letters(given_up, cli._LiveRemote(settings), settings)
    assert report.sent == len(given_up) == 1

    delivered = poll(lambda: len(receiver.delivered(order_id, "order_confirmed")) > tried
                     and receiver.delivered(order_id, "order_confirmed"), what="the replayed webhook call")
    assert len({r["key"] for r in delivered}) == 1, "the replay carries the notification's own Idempotency-Key"

    def webhook_sent(records: list) -> bool:
        return any(r.key() is not None and type(m := codec.decode(r.value())).__name__ == "NotificationSent"
                   and m.order_id == order_id and m.channel == "webhook" for r in records)

    read_topic(settings, shop.topics.notification_events, until=webhook_sent, timeout_s=30)
    outbox = Path(settings.home).resolve() / "data" / "notifications" / "outbox.jsonl"
    emails = [json.loads(line) for line in outbox.read_text(encoding="utf-8").split("\n")[:-1]]
    confirmations = [e for e in emails if e["to"] == email and e["template"] == "order_confirmed"]
    assert len(confirmations) == 1, "the email channel, which had delivered, is not sent the replay"
    assert [letter.flow for letter in letters_of(settings, codec, order_id)] == ["notifications.webhook"]
    assert len(receiver.delivered(order_id, "order_confirmed")) == tried + 1


def test_what_would_fail_again_or_act_on_an_unknown_order_is_kept_with_the_reason(shop, settings, codec, capsys):
    stray_order = f"o-never-{new_id()}"
    stray = ReserveStock(**shop.envelope(stray_order), sku=sku(), order_id=stray_order, quantity=1, currency="EUR")
    poison_key = f"poison-{new_id()}".encode()
    p = producer(settings)
    produce(p, shop.topics.order_commands, poison_key, b"not avro at all")
    produce(p, shop.topics.order_commands, stray_order.encode(), codec.encode(stray))  # the wrong flow's command

    def dead() -> list[DeadLetter]:
        letters = [letter for letter in read_dead_letters(settings, codec)
                   if letter.key in (poison_key, stray_order.encode())]
        return letters if len(letters) == 2 else []

    letters = poll(dead, timeout_s=60, what="both dead-lettered by the orders flow")
    assert {(letter.flow, letter.error_class) for letter in letters} == {("orders", "MalformedMessage"),
                                                                         ("orders", "FlowError")}
    # The dashboard's live stream shows them as they come, with the reason.
    deadline = time.monotonic() + 30
    for tick in ticks(settings, shop.token):
        shown = {d["key"]: d for d in tick["dead_letters"]}
        if poison_key.decode() in shown and stray_order in shown:
            break
        assert time.monotonic() < deadline, f"not on the dashboard after 30 s: {tick['dead_letters']}"
    assert shown[poison_key.decode()]["error"].startswith("MalformedMessage: ")
    assert shown[poison_key.decode()]["source"].startswith(f"{shop.topics.order_commands}[")
    assert shown[stray_order]["flow"] == "orders" and shown[stray_order]["error"].startswith("FlowError: ")
    capsys.readouterr()
    report = cli.replay_dead_letters(letters, cli._LiveRemote(settings), settings)
    assert (report.sent, report.kept) == (0, 2)
    out = capsys.readouterr().out
    assert "does not decode" in out and f"order {stray_order} is not stored" in out and "0 of 2 replayed" in out
    assert shop.order(stray_order) is None


def test_a_read_since_a_time_starts_each_partition_at_that_time(settings):
    # A topic of its own: the broker's time index finds the first record written at that time or later, and the
    # records of a topic are written in time order (a dead letter as it fails).
    topic = f"test.since.{new_id()}"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)
    now_ms = int(time.time() * 1000)
    p = producer(settings)
    for partition in (0, 1):
        for name, at in (("old", now_ms - 2 * 3_600_000), ("new", now_ms)):
            p.produce(topic, key=f"{name}-{partition}".encode(), value=b"x", timestamp=at, partition=partition)
    assert p.flush(10) == 0

    def keys(since_ms: int | None) -> set[bytes]:
        read: list[bytes] = []
        read_to_end(settings, topic, lambda record: read.append(record.key()), purpose="test", since_ms=since_ms)
        return set(read)

    assert keys(now_ms - 3_600_000) == {b"new-0", b"new-1"}
    assert keys(None) == {b"old-0", b"new-0", b"old-1", b"new-1"}
    assert keys(now_ms + 60_000) == set()  # nothing written since: nothing to read, and no wait for it
