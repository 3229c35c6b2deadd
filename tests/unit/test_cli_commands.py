"""`streamcart order cancel` and `streamcart product stock` refuse what the flows would refuse, with the domain's
reason, and otherwise wait until the effect shows: never "done" for a command the system ignored."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from schemas.messages import AdjustStock, CancelOrder, Message
from streamcart import cli
from streamcart.domain.inventory import adjustment_id
from streamcart.domain.orders import CANNOT_CANCEL_AFTER_DISPATCH
from streamcart.errors import StreamcartError


class FakeSystem:
    """The API's views of orders and stock, and the flows' reaction to each command sent (``react``)."""

    def __init__(self, *, orders: dict[str, dict[str, Any]] | None = None,
                 stock: dict[str, dict[str, Any]] | None = None,
                 react: Callable[[FakeSystem, Message], None] = lambda system, message: None) -> None:
        self.views = {"orders": orders or {}, "stock": stock or {}}
        self.react = react
        self.sent: list[Message] = []
        self.applied: set[str] = set()  # the event ids of the adjustments the inventory flow applied
        self.refused: dict[str, str] = {}  # the event ids of those it refused -> why

    def get(self, path: str) -> tuple[int, object]:
        kind, _, key = path.removeprefix("/v1/").partition("/")
        sku, marker, idempotency_key = key.partition("/adjustments/")
        if marker:  # GET /v1/stock/{sku}/adjustments/{key}: counted once the flow applied that event id
            if adjustment_id(sku, idempotency_key) in self.applied:
                return 200, {"sku": sku, "key": idempotency_key, "stock": self.views["stock"][sku]}
            if (reason := self.refused.get(adjustment_id(sku, idempotency_key))) is not None:
                return 409, {"error": {"code": "conflict", "message": f"refused: {reason}",
                                       "details": {"sku": sku, "key": idempotency_key, "reason": reason}}}
            return 404, {"error": {"code": "not_found"}}
        found = self.views.get(kind, {}).get(key)
        return (200, found) if found is not None else (404, {"error": {"code": "not_found"}})

    def send(self, message: Message) -> None:
        self.sent.append(message)
        self.react(self, message)

    def connect(self) -> None:
        self.connected = True


class FakeClock:
    """Time that passes only when the command pauses."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds


def order(status: str, **shown: Any) -> dict[str, Any]:
    """An order as GET /v1/orders/{id} shows it."""
    return {"order_id": "o-1", "customer_id": "c-1", "status": status, "currency": "EUR",
            "lines": [{"sku": "A", "quantity": 2, "unit_price_cents": 500, "status": "committed"}],
            "total_cents": 1000, "payment": None, "shipment": None, "cancel_reason": None, "cancel_detail": None,
            "placed_at": 1_000, "deadline": 31_000, "history": [], **shown}


def stock(on_hand: int, reserved: int, adjusted: int) -> dict[str, Any]:
    """A SKU's stock as GET /v1/stock/{sku} shows it."""
    return {"sku": "A", "on_hand": on_hand, "reserved": reserved, "available": on_hand - reserved,
            "adjusted": adjusted, "sold": 0, "restocked": 0}


def becomes(status: str, **shown: Any) -> Callable[[FakeSystem, Message], None]:
    """The orders flow's answer to a CancelOrder: the order moves to ``status``."""
    def react(system: FakeSystem, message: Message) -> None:
        if isinstance(message, CancelOrder):
            system.views["orders"][message.order_id] = order(status, **shown)
    return react


def applies_adjustments(system: FakeSystem, message: Message) -> None:
    """The inventory flow applying an AdjustStock."""
    if isinstance(message, AdjustStock):
        now = system.views["stock"].get(message.sku, stock(0, 0, 0))
        system.views["stock"][message.sku] = stock(now["on_hand"] + message.delta, now["reserved"],
                                                   now["adjusted"] + message.delta)
        system.applied.add(message.event_id)


def run(system: FakeSystem, *args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the console entry point against ``system``; its exit code."""
    monkeypatch.setattr(cli, "_remote", lambda: system)
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    return int(exited.value.code or 0)


def fake_wait(seconds: float) -> tuple[cli.Wait, FakeClock]:
    clock = FakeClock()
    return cli.Wait(seconds, clock=clock.monotonic, pause=clock.pause), clock


# --- order cancel -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["SHIPPED", "DELIVERED"])
def test_cancelling_a_dispatched_order_is_refused_with_the_domains_reason_and_nothing_is_sent(
        status: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(orders={"o-1": order(status)})
    assert run(system, "order", "cancel", "o-1", monkeypatch=monkeypatch) == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"error: order o-1 cannot be cancelled: {CANNOT_CANCEL_AFTER_DISPATCH} (it is {status})"
    assert system.sent == [] and out == ""


def test_cancelling_a_confirmed_order_waits_until_it_is_cancelled_and_shows_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")},
                        react=becomes("CANCELLED", cancel_reason="customer_request"))
    assert run(system, "order", "cancel", "o-1", "--by", "c-1", monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    (sent,) = system.sent
    assert isinstance(sent, CancelOrder) and (sent.order_id, sent.requested_by) == ("o-1", "c-1")
    assert out.startswith("cancelled o-1\norder o-1 · CANCELLED (customer_request)")
    assert err == ""


def test_a_cancel_that_loses_the_race_to_dispatch_is_reported_as_not_done(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")}, react=becomes("SHIPPED"))
    assert run(system, "order", "cancel", "o-1", monkeypatch=monkeypatch) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error: order o-1 was not cancelled: {CANNOT_CANCEL_AFTER_DISPATCH} (it was SHIPPED")
    assert "cancelled o-1" not in out


def test_a_cancel_the_order_does_not_show_in_time_is_an_error_after_the_whole_wait() -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")})  # shipping has not answered yet
    wait, clock = fake_wait(5.0)
    with pytest.raises(StreamcartError, match="order o-1 is not cancelled after 5 s \\(it is CONFIRMED\\)"):
        cli.cancel_order(system, "o-1", "c-1", wait)
    assert clock.now >= 5.0 and len(system.sent) == 1


def cancelled_after_a_second(system: FakeSystem) -> tuple[cli.Wait, FakeClock]:
    """A five-second wait during which the order shows CANCELLED from its first second on."""
    clock = FakeClock()

    def answer_after_a_second(seconds: float) -> None:
        clock.pause(seconds)
        if clock.now >= 1.0:
            system.views["orders"]["o-1"] = order("CANCELLED", cancel_reason="customer_request")

    return cli.Wait(5.0, clock=clock.monotonic, pause=answer_after_a_second), clock


def test_a_cancel_waits_through_a_pending_answer_until_the_order_is_cancelled() -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")})
    wait, clock = cancelled_after_a_second(system)
    cli.cancel_order(system, "o-1", "c-1", wait)
    assert 1.0 <= clock.now < 5.0


def test_a_cancel_reads_through_a_rebalances_503s_while_it_waits() -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")})
    system.get = _after_first(system.get, iter([(503, {"error": {"code": "unavailable"}})] * 3))  # type: ignore[method-assign]
    wait, clock = cancelled_after_a_second(system)
    cli.cancel_order(system, "o-1", "c-1", wait)
    assert len(system.sent) == 1 and 1.0 <= clock.now < 5.0


def test_a_503_that_lasts_the_whole_wait_is_reported() -> None:
    system = FakeSystem(orders={"o-1": order("CONFIRMED")})
    system.get = _after_first(system.get, iter([(503, {"error": {"code": "unavailable"}})] * 1_000))  # type: ignore[method-assign]
    wait, clock = fake_wait(2.0)
    with pytest.raises(cli.NotNow, match="HTTP 503"):
        cli.cancel_order(system, "o-1", "c-1", wait)
    assert clock.now >= 2.0


def _after_first(get: Callable[[str], tuple[int, object]], then: Any) -> Callable[[str], tuple[int, object]]:
    """``get`` for the first read, then the answers of ``then`` while they last, then ``get`` again."""
    reads = 0

    def reading(path: str) -> tuple[int, object]:
        nonlocal reads
        reads += 1
        return get(path) if reads == 1 else next(then, None) or get(path)
    return reading


def test_cancelling_an_order_cancelled_already_sends_nothing_and_says_why_it_ended(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(orders={"o-1": order("CANCELLED", cancel_reason="timeout")})
    assert run(system, "order", "cancel", "o-1", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out.strip() == "order o-1 was cancelled already (timeout)"
    assert system.sent == []


def test_cancelling_an_unknown_order_is_an_error_and_sends_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem()
    assert run(system, "order", "cancel", "o-404", monkeypatch=monkeypatch) == 1
    assert capsys.readouterr().err.strip() == "error: order o-404 not found"
    assert system.sent == []


def test_a_cancel_not_waited_for_says_it_was_sent_not_that_it_was_done(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(orders={"o-1": order("PENDING")})
    assert run(system, "order", "cancel", "o-1", "--wait", "0", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out.startswith("cancel of o-1 sent (not waited for")
    assert len(system.sent) == 1


# --- product stock ------------------------------------------------------------------------------------------

def test_removing_stock_that_orders_hold_is_refused_with_the_domains_reason_and_nothing_is_sent(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=4, adjusted=10)})
    assert run(system, "product", "stock", "A", "-7", monkeypatch=monkeypatch) == 1
    out, err = capsys.readouterr()
    assert err.strip() == ("error: stock of A not adjusted: adjusting A by -7 would leave -1 available "
                           "(on hand 10, reserved 4)")
    assert system.sent == [] and out == ""


def test_an_adjustment_waits_until_the_stock_shows_it_and_prints_the_new_counts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=4, adjusted=10)}, react=applies_adjustments)
    assert run(system, "product", "stock", "A", "-6", "--reason", "count", monkeypatch=monkeypatch) == 0
    (sent,) = system.sent
    assert isinstance(sent, AdjustStock) and (sent.sku, sent.delta, sent.reason) == ("A", -6, "count")
    assert capsys.readouterr().out.strip() == "adjusted A by -6: on hand 4, reserved 4, available 0"


def test_a_sku_never_stocked_can_be_stocked() -> None:
    system = FakeSystem(react=applies_adjustments)
    wait, _ = fake_wait(5.0)
    cli.adjust_stock(system, "A", 3, "delivery", wait)
    assert system.views["stock"]["A"]["on_hand"] == 3


def test_an_adjustment_refused_because_orders_reserved_meanwhile_is_reported_with_the_reason() -> None:
    def reserved_first(system: FakeSystem, message: Message) -> None:
        system.views["stock"]["A"] = stock(on_hand=10, reserved=8, adjusted=10)  # the flow then refuses -5

    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=4, adjusted=10)}, react=reserved_first)
    wait, clock = fake_wait(5.0)
    with pytest.raises(cli.CommandRefused, match="stock of A was not adjusted: adjusting A by -5 would leave -3"):
        cli.adjust_stock(system, "A", -5, "count", wait)
    assert clock.now >= 5.0


def test_an_adjustment_the_flow_refused_is_reported_refused_with_its_reason_without_waiting_out_the_wait() -> None:
    reason = "adjusting A by -5 would leave -3 available (on hand 10, reserved 8)"

    def refused_by_the_flow(system: FakeSystem, message: Message) -> None:
        system.views["stock"]["A"] = stock(on_hand=10, reserved=8, adjusted=10)  # orders were queued ahead of it
        system.refused[message.event_id] = reason

    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=4, adjusted=10)}, react=refused_by_the_flow)
    wait, clock = fake_wait(5.0)
    with pytest.raises(cli.CommandRefused) as raised:
        cli.adjust_stock(system, "A", -5, "count", wait)
    assert str(raised.value) == f"stock of A was not adjusted: refused: {reason}"
    assert clock.now == 0.0  # answered by the first lookup


def test_an_adjustment_the_stock_does_not_show_in_time_is_an_error_not_a_refusal() -> None:
    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=0, adjusted=10)})
    wait, _ = fake_wait(2.0)
    with pytest.raises(StreamcartError, match="does not show the adjustment by 5 after 2 s") as raised:
        cli.adjust_stock(system, "A", 5, "delivery", wait)
    assert not isinstance(raised.value, cli.CommandRefused)


def test_an_adjustment_waits_for_itself_not_for_another_of_the_same_size_landing_meanwhile() -> None:
    """The wait asks for this adjustment's own event id: someone else's +5 arriving instead is not this one."""
    def someone_elses_instead(system: FakeSystem, message: Message) -> None:
        assert isinstance(message, AdjustStock)
        applies_adjustments(system, message.model_copy(update={"event_id": "someone-else"}))

    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=0, adjusted=10)}, react=someone_elses_instead)
    wait, _ = fake_wait(2.0)
    with pytest.raises(StreamcartError, match="does not show the adjustment by 5 after 2 s"):
        cli.adjust_stock(system, "A", 5, "delivery", wait)
    assert system.views["stock"]["A"]["adjusted"] == 15  # the stock moved by 5, but not by ours


def test_an_adjustment_waits_through_a_rebalances_503s_and_reports_one_that_lasts_the_whole_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=0, adjusted=10)}, react=applies_adjustments)
    answers = iter([(503, {"error": {"code": "unavailable"}})] * 3)
    plain_get = system.get
    monkeypatch.setattr(system, "get", lambda path: next(answers, None) or plain_get(path)
                        if "/adjustments/" in path else plain_get(path))
    wait, _ = fake_wait(5.0)
    cli.adjust_stock(system, "A", 5, "delivery", wait)  # three 503s, then counted
    assert system.views["stock"]["A"]["on_hand"] == 15

    system = FakeSystem(stock={"A": stock(on_hand=10, reserved=0, adjusted=10)}, react=applies_adjustments)
    plain_get = system.get
    monkeypatch.setattr(system, "get", lambda path: (503, {"error": {"code": "unavailable"}})
                        if "/adjustments/" in path else plain_get(path))
    wait, _ = fake_wait(2.0)
    with pytest.raises(cli.NotNow, match="HTTP 503"):
        cli.adjust_stock(system, "A", 5, "delivery", wait)


def test_demo_ends_by_printing_the_dashboard_link_with_an_admin_token_that_the_api_accepts(monkeypatch, capsys):
    import time
    from types import SimpleNamespace

    import streamcart.demo
    from api.auth import authenticate
    from streamcart.settings import Settings

    settings = Settings()
    started: list[str] = []
    monkeypatch.setattr(cli, "_stack", lambda: SimpleNamespace(settings=settings))
    monkeypatch.setattr(cli, "_up", lambda stack, only: started.append("up"))
    # Only the seeding needs a stack: the token is the demo's own.
    monkeypatch.setattr(streamcart.demo, "seed", lambda s: started.append("seeded") or 12)

    cli.demo()

    out = capsys.readouterr().out
    assert started == ["up", "seeded"]
    link = next(line for line in out.splitlines() if "/dashboard#token=" in line)
    token = link.split("#token=", 1)[1].strip()
    assert link.split()[-1].startswith(f"{settings.worker_url(0)}/dashboard#token=")
    principal = authenticate(f"Bearer {token}", settings.jwt_secret.get_secret_value())
    assert principal.is_admin
    assert 11.9 * 3600 < principal.expires_at - time.time() < 12.1 * 3600  # "admin token (12 h)", as printed


@pytest.mark.parametrize("args", [
    ["product", "stock", "A#x", "5"],  # '#' would cut the URL the stock is read from: another SKU's answer
    ["product", "upsert", "A/o-1", "--name", "x", "--price", "1"],
    ["product", "show", "A?b"],
    ["order", "show", "o 1"],
    ["order", "cancel", "o-1/x"],
    ["order", "place", "--line", "A#x:1"],
    ["order", "place", "--line", "A:1", "--customer", "c 1"],
])
def test_an_id_the_api_would_not_accept_is_refused_before_anything_is_read_or_sent(monkeypatch, args) -> None:
    assert "is not an id" in refused_before_anything_is_read_or_sent(monkeypatch, args)


def refused_before_anything_is_read_or_sent(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> str:
    """What ``streamcart ARGS`` says when it exits as a usage error (2), having read and sent nothing."""
    from typer.testing import CliRunner

    system = FakeSystem(stock={"A": {"on_hand": 1, "reserved": 0, "adjusted": 1, "sold": 0, "restocked": 0}})
    read: list[str] = []
    monkeypatch.setattr(system, "get", lambda path: read.append(path) or (404, {}))
    monkeypatch.setattr(cli, "_remote", lambda: system)
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 2, done.output
    assert (system.sent, read) == ([], [])
    return done.output


@pytest.mark.parametrize(("args", "says"), [
    (["--name", "Key\x1b[2Jboard", "--price", "1"], "control characters"),
    (["--name", "Keyboard", "--price", "-1"], "greater than or equal to 0"),
    (["--name", "Keyboard", "--price", "1", "--currency", "euro"], "currency"),
])
def test_a_product_the_api_would_refuse_is_refused_before_anything_is_sent(monkeypatch, args, says) -> None:
    from typer.testing import CliRunner

    system = FakeSystem()
    monkeypatch.setattr(cli, "_remote", lambda: system)
    done = CliRunner().invoke(cli.app, ["product", "upsert", "KB-001", *args])
    assert done.exit_code == 2, done.output
    assert says in done.output
    assert system.sent == []


def test_a_product_upsert_sends_what_it_was_given(monkeypatch) -> None:
    system = FakeSystem()
    assert run(system, "product", "upsert", "KB-001", "--name", "Clavier — AZERTY", "--price", "4999",
               "--no-active", monkeypatch=monkeypatch) == 0
    (sent,) = system.sent
    assert (sent.sku, sent.name, sent.unit_price_cents, sent.currency, sent.active) == (
        "KB-001", "Clavier — AZERTY", 4999, "EUR", False)


def test_an_order_placed_with_a_webhook_carries_it_and_a_bad_url_is_refused_before_anything_is_sent(monkeypatch):
    system = FakeSystem()
    assert run(system, "order", "place", "--line", "A:1", "--wait", "0", "--webhook", "https://shop.example/hook",
               monkeypatch=monkeypatch) == 0
    (placed,) = system.sent
    assert placed.webhook_url == "https://shop.example/hook"
    assert run(system, "order", "place", "--line", "A:1", "--webhook", "shop.example/hook",
               monkeypatch=monkeypatch) == 2
    assert len(system.sent) == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--line", "A:1", "--currency", "eur"], "--currency"),
    (["--line", "A:1001"], "--line"),
    (["--line", "A:1", "--email", "not-an-address"], "--email"),
    (["--line", "A:1", "--phone", "555"], "--phone"),
    (["--line", "A:1", "--token", "tok\x1b[2J"], "--token"),
    (["--line", "A:1", "--webhook", "ftp://x"], "--webhook"),
])
def test_an_order_the_api_would_refuse_is_refused_before_anything_is_sent(monkeypatch, args, says) -> None:
    from typer.testing import CliRunner

    system = FakeSystem()
    monkeypatch.setattr(cli, "_remote", lambda: system)
    done = CliRunner().invoke(cli.app, ["order", "place", *args, "--wait", "0"])
    assert done.exit_code == 2, done.output
    assert says in done.output
    assert system.sent == []


def test_a_product_neither_catalogued_nor_stocked_is_an_error_and_one_that_is_not(monkeypatch) -> None:
    assert run(FakeSystem(), "product", "show", "NOPE-1", monkeypatch=monkeypatch) == 1
    stocked = FakeSystem(stock={"A": {"on_hand": 1, "reserved": 0, "adjusted": 1, "sold": 0, "restocked": 0}})
    assert run(stocked, "product", "show", "A", monkeypatch=monkeypatch) == 0


def test_an_up_interrupted_says_what_keeps_running_and_how_to_stop_it(monkeypatch) -> None:
    from types import SimpleNamespace

    from typer.testing import CliRunner

    def interrupted(only):
        raise KeyboardInterrupt

    from streamcart.settings import Settings

    monkeypatch.setattr(cli, "_stack", lambda: SimpleNamespace(up=interrupted, settings=Settings()))
    done = CliRunner().invoke(cli.app, ["up"])
    assert done.exit_code == 130
    assert "keeps running" in done.output and "streamcart down" in done.output


def test_a_token_the_api_refuses_names_the_secret_to_check(monkeypatch) -> None:
    from streamcart.errors import StreamcartError
    from streamcart.settings import Settings
    from streamcart.stack import probes

    monkeypatch.setattr(probes, "http_get_json", lambda url, timeout_s, headers=None: (401, {"error": {}}))
    with pytest.raises(StreamcartError, match="STREAMCART_JWT_SECRET here must be the stack's"):
        cli._LiveRemote(Settings()).get("/v1/orders/o-1")


def test_the_version_is_printed(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out.startswith("streamcart 0.")


def test_a_flow_no_letter_can_name_is_a_usage_error_naming_those_that_can() -> None:
    from typer.testing import CliRunner

    done = CliRunner().invoke(cli.app, ["dlq", "list", "--flow", "notification"])
    assert done.exit_code == 2 and "notifications.webhook" in done.output
    selection = cli._selection(["orders", "notifications.sms", "warehouse:streamcart-warehouse-orders"], None, None,
                               None, None)
    assert selection.flows == {"orders", "notifications.sms", "warehouse:streamcart-warehouse-orders"}


# --- order place / show: what a wait that ran out says ---------------------------------------------------------

def test_an_order_just_placed_that_is_not_stored_when_the_wait_ends_is_said_to_be_behind_not_missing() -> None:
    wait, clock = fake_wait(3.0)
    with pytest.raises(cli.StreamcartError) as refused:
        cli._show_order(FakeSystem(), "o-1", wait, placed=True)
    assert "was sent, but the workers have not stored it after 3 s" in str(refused.value)
    assert "streamcart order show o-1 --wait 30" in str(refused.value) and clock.now >= 3.0


def test_showing_an_order_nobody_placed_says_not_found() -> None:
    wait, _ = fake_wait(0.0)
    with pytest.raises(cli.StreamcartError, match=r"^order o-404 not found$"):
        cli._show_order(FakeSystem(), "o-404", wait)


def test_an_order_still_pending_when_the_wait_ends_is_shown_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    wait, clock = fake_wait(2.0)
    cli._show_order(FakeSystem(orders={"o-1": order("PENDING")}), "o-1", wait, placed=True)
    out = capsys.readouterr().out
    assert "PENDING" in out and "still PENDING after 2 s" in out and clock.now >= 2.0


def test_a_settled_order_is_shown_without_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    wait, clock = fake_wait(5.0)
    cli._show_order(FakeSystem(orders={"o-1": order("CONFIRMED")}), "o-1", wait, placed=True)
    out = capsys.readouterr().out
    assert "CONFIRMED" in out and "still" not in out and clock.now == 0.0


def test_a_product_not_stocked_yet_is_shown_as_one_document_with_no_stock(monkeypatch, capsys) -> None:
    """README's next step after `product upsert`: it printed the product, then a Python dict of the stock's 404."""
    system = FakeSystem()
    system.views["products"] = {"MUG-7": {"sku": "MUG-7", "name": "Mug", "unit_price_cents": 1299}}
    assert run(system, "product", "show", "MUG-7", monkeypatch=monkeypatch) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"product": {"sku": "MUG-7", "name": "Mug", "unit_price_cents": 1299}, "stock": None}
    assert run(system, "product", "show", "NOPE-1", monkeypatch=monkeypatch) == 1
    assert "no product and no stock NOPE-1" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["order", "show", "o-1", "--wait", "inf"],  # would poll for good
    ["order", "cancel", "o-1", "--wait", "inf"],
    ["product", "stock", "A", "5", "--wait", "inf"],
    ["traffic", "--seconds", "inf"],
    ["bench", "saga", "--rate", "inf"],  # a minimum refuses nan, not inf
    ["drill", "--every", "inf"],
    ["audit", "--wait", "inf"],
])
def test_a_wait_or_a_rate_that_is_not_a_finite_number_is_refused_before_anything_is_read_or_sent(monkeypatch,
                                                                                                 args) -> None:
    assert "expected a finite number" in refused_before_anything_is_read_or_sent(monkeypatch, args)


@pytest.mark.parametrize("args", [
    ["order", "place", "--line", "A:1", "--wait", "-5"],
    ["order", "show", "o-1", "--wait", "-1"],
    ["order", "cancel", "o-1", "--wait", "-1"],
    ["product", "stock", "A", "5", "--wait", "-0.5"],
])
def test_a_negative_wait_is_refused_before_anything_is_read_or_sent(monkeypatch, args) -> None:
    assert "greater than or equal to 0" in refused_before_anything_is_read_or_sent(monkeypatch, args)


@pytest.mark.parametrize("position", ["2147483648:0", "0:9223372036854775808", "1:x"])
def test_a_dead_letter_position_out_of_kafkas_range_is_a_usage_error(position) -> None:
    from typer.testing import CliRunner

    done = CliRunner().invoke(cli.app, ["dlq", "show", position], env={"COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert "expected PARTITION:OFFSET" in done.output


def test_an_order_placed_whose_outcome_cannot_be_read_says_it_is_placed_and_not_to_place_it_again(
        monkeypatch, capsys):
    """worker 0 killed: the order went to Kafka, then reading it failed; a plain "does not answer" led to a retry,
    a second order paid for."""

    class Unreadable(FakeSystem):
        def get(self, path: str) -> tuple[int, object]:
            raise cli.ApiUnreachable("the API does not answer on any worker")

    system = Unreadable()
    assert run(system, "order", "place", "--line", "A:1", monkeypatch=monkeypatch) == 1
    assert [type(m).__name__ for m in system.sent] == ["PlaceOrder"]
    order_id = system.sent[0].order_id
    err = capsys.readouterr().err
    assert f"{order_id} is placed, but its outcome cannot be read" in err and "do not place it again" in err


def test_the_cli_reads_through_the_next_worker_when_one_does_not_answer(monkeypatch, tmp_path):
    from streamcart.settings import Settings

    settings = Settings(home=tmp_path, workers=2)
    asked: list[str] = []

    def http_get_json(url, timeout_s, headers):
        asked.append(url)
        if url.startswith(settings.worker_url(0)):
            raise ConnectionRefusedError("refused")
        return 200, {"order_id": "o-1"}

    monkeypatch.setattr("streamcart.stack.probes.http_get_json", http_get_json)
    remote = cli._LiveRemote(settings)
    assert remote.get("/v1/orders/o-1") == (200, {"order_id": "o-1"})
    assert remote.get("/v1/orders/o-2") == (200, {"order_id": "o-1"})
    assert asked == [f"{settings.worker_url(0)}/v1/orders/o-1", f"{settings.worker_url(1)}/v1/orders/o-1",
                     f"{settings.worker_url(1)}/v1/orders/o-2"]  # the one that answered, first
    monkeypatch.setattr("streamcart.stack.probes.http_get_json",
                        lambda url, timeout_s, headers: (_ for _ in ()).throw(ConnectionRefusedError("refused")))
    with pytest.raises(cli.ApiUnreachable, match=r"the API does not answer on any worker .*is the stack up"):
        remote.get("/v1/orders/o-3")
