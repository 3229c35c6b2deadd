import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from domain_builders import kinds, make, run

from schemas.messages import (
    AdjustStock,
    CommitStock,
    Message,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    StockCommitted,
    StockRejected,
    StockRejection,
    StockReleased,
    StockReserved,
    StockRestocked,
    UpsertProduct,
)
from streamcart.domain import catalog
from streamcart.domain.catalog import ProductState
from streamcart.domain.decision import Decision
from streamcart.domain.inventory import (
    ADJUSTMENT_MEMORY,
    REFUSED_ADJUSTMENTS,
    AdjustmentMemory,
    AdjustmentOutcome,
    RefusedAdjustment,
    Reservation,
    ReservationStatus,
    StockChange,
    StockState,
    adjustment_body,
    adjustment_outcome,
    adjustments_key,
    decide,
    keyable,
    records,
    reservation_key,
)

ANVIL = ProductState(sku="A", name="Anvil", unit_price_cents=500, currency="EUR", active=True,
                     updated={"event_id": "p-1", "at": 0})


@dataclass(frozen=True)
class Shelf:
    """One SKU as the inventory agent stores it: the counters, and the reservations by order (their own keys)."""

    stock: StockState
    reservations: dict[str, Reservation] = field(default_factory=dict)
    adjustments: AdjustmentMemory | None = None


def stock_decide(shelf: Shelf | None, message: Message, product: ProductState | None = ANVIL) -> Decision[Shelf]:
    """Load the pieces ``message`` needs from the shelf, decide, and store what the decision changed."""
    order_id = getattr(message, "order_id", None)
    stock = shelf.stock if shelf else None
    reservation = shelf.reservations.get(order_id) if shelf and order_id else None
    decision = decide(stock, reservation, message, product=product, adjustments=shelf.adjustments if shelf else None)
    if decision.state is None:
        return Decision(state=None, messages=decision.messages, rejected=decision.rejected)
    reservations = dict(shelf.reservations) if shelf else {}
    if decision.state.reservation is not None:
        reservations[decision.state.reservation.order_id] = decision.state.reservation
    adjustments = decision.state.adjustments or (shelf.adjustments if shelf else None)
    return Decision(state=Shelf(decision.state.stock, reservations, adjustments), messages=decision.messages,
                    rejected=decision.rejected)


def apply(state: Shelf | None, *messages: Message, product: ProductState | None = ANVIL):
    return run(lambda shelf, message: stock_decide(shelf, message, product), state, *messages)


def adjust(delta: int, **kw) -> AdjustStock:
    return make(AdjustStock, sku="A", delta=delta, reason="delivery", **kw)


def reserve(order_id: str = "o-1", quantity: int = 2, currency: str = "EUR", **kw) -> ReserveStock:
    return make(ReserveStock, sku="A", order_id=order_id, quantity=quantity, currency=currency, **kw)


def release(order_id: str = "o-1", **kw) -> ReleaseStock:
    return make(ReleaseStock, sku="A", order_id=order_id, reason="timeout", **kw)


def commit(order_id: str = "o-1", **kw) -> CommitStock:
    return make(CommitStock, sku="A", order_id=order_id, **kw)


def restock(order_id: str = "o-1", **kw) -> RestockItems:
    return make(RestockItems, sku="A", order_id=order_id, **kw)


def stocked(on_hand: int = 10) -> Shelf:
    return apply(None, adjust(on_hand))[0]


def refuse(state: Shelf, *writes_off: AdjustStock) -> Shelf:
    """The shelf once each of ``writes_off`` was refused, as the inventory stores it (the refusal noted)."""
    for write_off in writes_off:
        decision = stock_decide(state, write_off)
        assert decision.rejected is not None and decision.state is not None, decision
        state = decision.state
    return state


def counts(state: Shelf) -> tuple[int, int, int]:
    return state.stock.on_hand, state.stock.reserved, state.stock.available


# --- adjustments ----------------------------------------------------------------------------------------------

def test_adjusting_stock_changes_what_is_on_hand_and_emits_nothing():
    state, emitted = apply(None, adjust(10), adjust(-3, event_id="count"))
    assert counts(state) == (7, 0, 7)
    assert emitted == []


def test_a_redelivered_adjustment_is_applied_once():
    state, _ = apply(stocked(10), adjust(5))
    assert stock_decide(state, adjust(5)) == Decision(state=None)
    assert state.stock.on_hand == 15


def test_a_write_off_may_take_what_is_not_reserved():
    state, _ = apply(stocked(10), reserve(quantity=4), adjust(-6))
    assert counts(state) == (4, 4, 0)


def test_an_adjustment_that_would_make_available_negative_is_refused_with_a_reason_noted_for_the_api():
    state, _ = apply(stocked(10), reserve(quantity=4))
    decision = stock_decide(state, adjust(-7, event_id="write-off"))
    reason = "adjusting A by -7 would leave -1 available (on hand 10, reserved 4)"
    assert decision.rejected == reason and decision.messages == ()
    assert decision.state is not None and decision.state.stock == state.stock  # the counters as they were
    refused = adjustment_outcome(decision.state.stock, decision.state.adjustments, "write-off")
    assert refused == AdjustmentOutcome(adjustment_body(-7, "delivery"), refused=reason)


def test_a_refused_adjustment_redelivered_is_refused_again_and_changes_nothing():
    state = refuse(apply(stocked(10), reserve(quantity=4))[0], adjust(-7, event_id="write-off"))
    again = stock_decide(state, adjust(-7, event_id="write-off"))
    assert again == Decision(state=None, rejected="adjusting A by -7 would leave -1 available (on hand 10, reserved 4)")


def test_a_refused_adjustment_stays_refused_when_the_stock_comes_back():
    """The key's first body is what counts: an admin who still means it sends it under a new key."""
    state = refuse(apply(stocked(10), reserve(quantity=4))[0], adjust(-7, event_id="write-off"))
    state, _ = apply(state, release(), adjust(5, event_id="delivery"))
    assert counts(state) == (15, 0, 15)
    reason = "adjusting A by -7 would leave -1 available (on hand 10, reserved 4)"
    assert stock_decide(state, adjust(-7, event_id="write-off")) == Decision(state=None, rejected=reason)
    other = stock_decide(state, adjust(-2, event_id="write-off"))  # its key reused for another body
    assert other.state is None and other.rejected is not None and "was refused with another delta" in other.rejected
    assert adjustment_outcome(state.stock, state.adjustments, "write-off") == AdjustmentOutcome(
        adjustment_body(-7, "delivery"), refused=reason)
    assert stock_decide(state, adjust(-7, event_id="write-off-2")).state.stock.on_hand == 8  # a new key applies


def test_refusals_are_remembered_with_the_adjustments_and_the_oldest_forgotten_beyond_a_bound():
    state, _ = apply(refuse(stocked(1), adjust(-5, event_id="no-0")), adjust(2, event_id="in-1"))
    state = refuse(state, *(adjust(-5, event_id=f"no-{n}") for n in range(1, REFUSED_ADJUSTMENTS + 1)))
    state, _ = apply(state, adjust(2, event_id="in-2"))
    assert state.adjustments is not None and len(state.adjustments.refused) == REFUSED_ADJUSTMENTS
    assert adjustment_outcome(state.stock, state.adjustments, "no-0") is None  # the oldest, forgotten
    assert adjustment_outcome(state.stock, state.adjustments, "no-1").refused is not None
    applied = AdjustmentOutcome(adjustment_body(2, "delivery"))
    assert adjustment_outcome(state.stock, state.adjustments, "in-1") == applied
    assert counts(state) == (5, 0, 5)


def test_an_adjustment_memory_stored_before_refusals_were_kept_still_loads_and_takes_one():
    old = AdjustmentMemory.model_validate_json('{"sku": "A", "event_ids": ["old-1"], "bodies": [null]}')
    assert old.refused == ()
    shelf = Shelf(StockState(sku="A", on_hand=2, adjusted=2, last_adjustment="old-2"), adjustments=old)
    refused = stock_decide(shelf, adjust(-3, event_id="new-1"))
    assert refused.rejected is not None and refused.state is not None
    memory = refused.state.adjustments
    assert memory is not None and memory.event_ids == ("old-1",)
    assert memory.refused == (RefusedAdjustment(event_id="new-1", body=adjustment_body(-3, "delivery"),
                                                reason=refused.rejected),)
    assert AdjustmentMemory.model_validate_json(memory.model_dump_json()) == memory


def test_a_refused_adjustment_writes_its_memory_alone_and_a_redelivery_writes_it_again():
    """No counters for a SKU never stocked (its stock would read as a zero stock, not as none); the memory again on
    a redelivery, as every redelivery stores its records again (a changelog left behind by a crash catches up)."""
    write_off = adjust(-3, event_id="write-off")
    decision, writes = records(None, lambda key: None, write_off, product=ANVIL)
    assert decision.rejected == "adjusting A by -3 would leave -3 available (on hand 0, reserved 0)"
    assert [key for key, _ in writes] == [adjustments_key("A")]
    memory = writes[0][1]
    again, rewritten = records(None, lambda key: None, write_off, product=ANVIL, remembered=lambda key: memory)
    assert (again.state, again.rejected) == (None, decision.rejected)
    assert rewritten == writes


# --- reservations ---------------------------------------------------------------------------------------------

def test_a_reservation_holds_stock_at_the_catalog_price_at_reservation_time():
    cmd = reserve(quantity=3)
    state, emitted = apply(stocked(10), cmd)
    [event] = emitted
    assert isinstance(event, StockReserved)
    assert (event.order_id, event.sku, event.quantity, event.unit_price_cents, event.currency) == ("o-1", "A", 3, 500,
                                                                                                    "EUR")
    assert (event.key, event.causation_id, event.correlation_id) == ("o-1", cmd.event_id, "o-1")
    assert counts(state) == (10, 3, 7)


def test_a_price_change_after_the_reservation_does_not_change_the_reserved_price():
    state, first = apply(stocked(10), reserve())
    repriced = ANVIL.model_copy(update={"unit_price_cents": 900})
    again = stock_decide(state, reserve(), repriced)
    assert list(again.messages) == first
    assert first[0].unit_price_cents == 500  # type: ignore[attr-defined]


def test_reserving_exactly_what_is_available_succeeds():
    _, emitted = apply(stocked(2), reserve(quantity=2))
    assert kinds(emitted) == ["StockReserved"]


def test_reserving_more_than_is_available_is_rejected_as_out_of_stock_with_what_is_available():
    state, emitted = apply(stocked(3), reserve("o-0", quantity=2), reserve(quantity=2))
    rejection = emitted[-1]
    assert isinstance(rejection, StockRejected)
    assert (rejection.reason, rejection.available, rejection.quantity) == (StockRejection.OUT_OF_STOCK, 1, 2)
    assert counts(state) == (3, 2, 1)
    assert state.reservations["o-1"].status == ReservationStatus.REJECTED


@pytest.mark.parametrize(("product", "detail"), [
    (None, "unknown sku A"),
    (ANVIL.model_copy(update={"active": False}), "A is not on sale"),
    (ANVIL.model_copy(update={"currency": "USD"}), "A is priced in USD, the order is in EUR"),
], ids=["unknown", "inactive", "other currency"])
def test_reserving_a_product_that_cannot_be_sold_is_rejected_as_product_unavailable(product, detail):
    state, emitted = apply(stocked(10), reserve(), product=product)
    [rejection] = emitted
    assert isinstance(rejection, StockRejected)
    assert (rejection.reason, rejection.detail) == (StockRejection.PRODUCT_UNAVAILABLE, detail)
    assert state.stock.reserved == 0


def test_reapplying_the_same_reservation_re_emits_the_same_event_and_holds_once():
    state, first = apply(stocked(10), reserve())
    again = stock_decide(state, reserve())
    assert again.state is None
    assert list(again.messages) == first


def test_a_reservation_repeated_under_another_event_id_still_holds_once_and_re_emits_the_first_result():
    state, first = apply(stocked(10), reserve())
    again = stock_decide(state, reserve(event_id="retry"))
    assert again.state is None and list(again.messages) == first


def test_reapplying_a_rejected_reservation_re_emits_the_same_rejection_even_after_new_stock_arrived():
    state, first = apply(stocked(1), reserve(quantity=2))
    state, _ = apply(state, adjust(10))
    again = stock_decide(state, reserve(quantity=2))
    assert again.state is None and list(again.messages) == first
    assert state.stock.reserved == 0


# --- release --------------------------------------------------------------------------------------------------

def test_releasing_a_reservation_gives_the_stock_back():
    cmd = release()
    state, emitted = apply(stocked(10), reserve(quantity=3), cmd)
    [event] = emitted[1:]
    assert isinstance(event, StockReleased)
    assert (event.quantity, event.causation_id) == (3, cmd.event_id)
    assert counts(state) == (10, 0, 10)


def test_a_redelivered_release_re_emits_the_same_event_and_releases_once():
    state, emitted = apply(stocked(10), reserve(quantity=3), release())
    assert list(stock_decide(state, release()).messages) == emitted[1:]
    assert list(stock_decide(state, release(event_id="another")).messages) == emitted[1:]


def test_a_release_before_its_reserve_leaves_a_tombstone_so_the_late_reserve_holds_nothing():
    state, emitted = apply(stocked(10), release())
    [tombstone] = emitted
    assert isinstance(tombstone, StockReleased) and tombstone.quantity == 0
    state, emitted = apply(state, reserve(quantity=3))
    [rejection] = emitted
    assert isinstance(rejection, StockRejected)
    assert (rejection.reason, rejection.quantity) == (StockRejection.RELEASED, 3)
    assert counts(state) == (10, 0, 10)


def test_after_a_tombstone_both_the_release_and_the_late_reserve_re_emit_their_first_events():
    state, tombstone = apply(stocked(10), release())
    state, rejection = apply(state, reserve())
    assert list(stock_decide(state, reserve()).messages) == rejection
    assert list(stock_decide(state, release()).messages) == tombstone


def test_releasing_a_rejected_reservation_does_nothing():
    state, _ = apply(stocked(1), reserve(quantity=2))
    assert stock_decide(state, release()) == Decision(state=None)


def test_releasing_sold_stock_is_refused():
    state, _ = apply(stocked(10), reserve(), commit())
    assert stock_decide(state, release()).rejected == "cannot release A/o-1: it is committed"


# --- commit and restock ---------------------------------------------------------------------------------------

def test_committing_a_reservation_turns_it_into_sold():
    state, emitted = apply(stocked(10), reserve(quantity=3), commit())
    assert kinds(emitted) == ["StockReserved", "StockCommitted"]
    assert counts(state) == (7, 0, 7)
    assert state.stock.sold == 3


def test_a_redelivered_commit_re_emits_the_same_event_and_sells_once():
    state, emitted = apply(stocked(10), reserve(quantity=3), commit())
    assert list(stock_decide(state, commit()).messages) == emitted[1:]
    assert list(stock_decide(state, commit(event_id="another")).messages) == emitted[1:]


def test_committing_what_was_never_reserved_is_refused():
    assert stock_decide(stocked(10), commit()).rejected == "cannot commit A/o-1: it is not reserved"


def test_committing_a_released_reservation_is_refused():
    state, _ = apply(stocked(10), reserve(), release())
    assert stock_decide(state, commit()).rejected == "cannot commit A/o-1: it is released"


def test_restocking_puts_what_was_sold_back_on_hand():
    state, emitted = apply(stocked(10), reserve(quantity=3), commit(), restock())
    assert kinds(emitted)[-1] == "StockRestocked"
    assert counts(state) == (10, 0, 10)
    assert (state.stock.sold, state.stock.restocked) == (3, 3)


def test_a_redelivered_restock_re_emits_the_same_event_and_restocks_once():
    state, emitted = apply(stocked(10), reserve(quantity=3), commit(), restock())
    assert list(stock_decide(state, restock()).messages) == emitted[-1:]
    assert state.stock.on_hand == 10


def test_a_restock_that_overtook_its_commit_commits_and_restocks_in_one_step():
    state, emitted = apply(stocked(10), reserve(quantity=3), restock())
    assert kinds(emitted) == ["StockReserved", "StockCommitted", "StockRestocked"]
    assert counts(state) == (10, 0, 10)
    assert (state.stock.sold, state.stock.restocked) == (3, 3)


def test_the_commit_arriving_after_such_a_restock_re_emits_what_the_restock_emitted():
    state, emitted = apply(stocked(10), reserve(quantity=3), restock())
    late = stock_decide(state, commit())
    assert late.state is None
    assert kinds(late.messages) == ["StockCommitted", "StockRestocked"]
    assert list(late.messages) == emitted[1:]


def test_restocking_what_was_never_sold_is_refused():
    state, _ = apply(stocked(10), reserve(), release())
    assert stock_decide(state, restock()).rejected == "cannot restock A/o-1: it is released"
    assert stock_decide(stocked(10), restock()).rejected == "cannot restock A/o-1: it is not reserved"


def test_a_reservation_is_stored_apart_from_the_counters_under_its_own_key():
    decision = decide(stocked(10).stock, None, reserve(), product=ANVIL)
    assert decision.state is not None and decision.state.reservation is not None
    reservation = decision.state.reservation
    assert reservation_key(reservation.sku, reservation.order_id) == "A/o-1"
    assert decision.state.stock.reserved == 2


def test_a_reservation_handed_in_for_another_order_is_refused():
    reservation = stock_decide(stocked(10), reserve("o-2")).state.reservations["o-2"]  # type: ignore[union-attr]
    decision = decide(stocked(10).stock, reservation, release(), product=ANVIL)
    assert decision.rejected == "reservation A/o-2 given for A/o-1"


def test_adjustments_are_remembered_long_enough_to_drop_redeliveries_but_not_for_ever():
    first = adjust(1, event_id="adj-first")
    state, _ = apply(None, first, *(adjust(1, event_id=f"adj-{n}") for n in range(ADJUSTMENT_MEMORY - 1)))
    assert stock_decide(state, first) == Decision(state=None)
    assert stock_decide(state, adjust(1, event_id=f"adj-{ADJUSTMENT_MEMORY - 2}")) == Decision(state=None)  # latest
    state, _ = apply(state, adjust(1, event_id="adj-one-more"))
    assert state.adjustments is not None and len(state.adjustments.event_ids) == ADJUSTMENT_MEMORY - 1
    assert state.stock.last_adjustment == "adj-one-more"
    assert state.stock.on_hand == ADJUSTMENT_MEMORY + 1
    assert not state.adjustments.knows("adj-first")
    assert stock_decide(state, first).state is not None  # forgotten: applied again


def test_a_reservation_carries_no_adjustment_memory_however_often_the_sku_was_adjusted():
    """The counters, which every reservation writes, stay small: the ids live in a record only adjustments touch."""
    state, _ = apply(None, *(adjust(1, event_id=f"adjustment-{n:04}") for n in range(300)))
    decision = stock_decide(state, reserve())
    assert decision.state is not None
    assert decision.state.stock.model_dump_json().count("adjustment-") == 1  # the latest, by name
    assert len(decision.state.stock.model_dump_json()) < 1_000


def test_a_stock_stored_before_the_memory_had_its_own_record_still_drops_the_adjustments_it_remembers():
    """A SKU stored by an older streamcart keeps its ids in the counters: they count until the next adjustment
    moves them into the memory, and after that too."""
    legacy = StockState.model_validate_json(
        '{"sku": "A", "on_hand": 5, "adjusted": 5, "recent_adjustments": ["old-1", "old-2"]}')
    shelf = Shelf(legacy)
    assert stock_decide(shelf, adjust(5, event_id="old-2")) == Decision(state=None)
    state, _ = apply(shelf, adjust(1, event_id="new-1"))
    assert state.stock.recent_adjustments == ()
    assert state.adjustments is not None and state.adjustments.event_ids == ("old-1", "old-2")
    for again, delta in (("old-1", 5), ("old-2", 5), ("new-1", 1)):
        assert stock_decide(state, adjust(delta, event_id=again)) == Decision(state=None)
    assert state.stock.on_hand == 6


def test_what_each_remembered_adjustment_said_is_kept_with_it_and_forgotten_with_it():
    """What tells a retry of a key from another adjustment under the same key (the API answers the latter 409)."""
    state, _ = apply(None, adjust(3, event_id="adj-a"))
    delivery = AdjustmentOutcome(adjustment_body(3, "delivery"))
    assert adjustment_outcome(state.stock, state.adjustments, "adj-a") == delivery  # the latest
    state, _ = apply(state, make(AdjustStock, sku="A", delta=-1, reason="count", event_id="adj-b"))
    assert adjustment_outcome(state.stock, state.adjustments, "adj-a") == delivery  # from the memory
    count = AdjustmentOutcome(adjustment_body(-1, "count"))
    assert adjustment_outcome(state.stock, state.adjustments, "adj-b") == count
    assert adjustment_outcome(state.stock, state.adjustments, "adj-c") is None
    assert adjustment_body(3, "delivery") not in {adjustment_body(4, "delivery"), adjustment_body(3, "count")}

    state, _ = apply(state, *(adjust(1, event_id=f"adj-{n}") for n in range(ADJUSTMENT_MEMORY)))
    assert state.adjustments is not None
    assert len(state.adjustments.bodies) == len(state.adjustments.event_ids)  # no body outlives its id
    assert "adj-a" not in state.adjustments.entries()
    assert state.adjustments.entries()[f"adj-{ADJUSTMENT_MEMORY - 2}"] == adjustment_body(1, "delivery")


def test_an_adjustment_id_applied_with_another_body_is_refused_not_applied_or_ignored():
    """What slips past the API's 409 (a key reused while its first adjustment was in flight on another owner)."""
    state, _ = apply(None, adjust(3, event_id="adj-a"), adjust(1, event_id="adj-b"))
    for event_id in ("adj-b", "adj-a"):  # the latest, and one in the memory
        other = stock_decide(state, make(AdjustStock, sku="A", delta=5, reason="delivery", event_id=event_id))
        assert other.state is None and other.rejected is not None and "another delta or reason" in other.rejected
    assert stock_decide(state, adjust(3, event_id="adj-a")) == Decision(state=None)  # a redelivery stays a no-op


def test_an_adjustment_remembered_before_bodies_were_kept_counts_without_one():
    legacy = StockState.model_validate_json(
        '{"sku": "A", "on_hand": 5, "adjusted": 5, "last_adjustment": "old-1"}')
    assert adjustment_outcome(legacy, None, "old-1") == AdjustmentOutcome(None)
    state, _ = apply(Shelf(legacy), adjust(1, event_id="new-1"))
    assert state.adjustments is not None and state.adjustments.event_ids == ("old-1",)
    assert adjustment_outcome(state.stock, state.adjustments, "old-1") == AdjustmentOutcome(None)
    assert adjustment_outcome(state.stock, state.adjustments, "new-1").body == adjustment_body(1, "delivery")


def test_a_sku_that_could_meet_another_record_of_the_stock_table_cannot_key_it():
    assert keyable("KB-001") and keyable("a.b:c_d")
    assert not keyable("A/o-1") and not keyable("A#adjustments") and not keyable("")


def test_inventory_rejects_what_it_does_not_handle():
    upsert = make(UpsertProduct, sku="A", name="x", unit_price_cents=1, currency="EUR")
    assert stock_decide(None, upsert).rejected == "inventory does not handle UpsertProduct"


def test_the_stock_survives_the_json_round_trip_its_table_makes():
    state, _ = apply(stocked(10), reserve(), reserve("o-2", quantity=1), commit(), release("o-2"))
    for reservation in state.reservations.values():
        change = StockChange(stock=state.stock, reservation=reservation)
        assert StockChange.model_validate_json(change.model_dump_json()) == change


# --- I2 under any interleaving --------------------------------------------------------------------------------

class Ledger:
    """What the emitted events and accepted adjustments say the stock must be (an oracle independent of state)."""

    def __init__(self) -> None:
        self.events: dict[str, Message] = {}
        self.totals: Counter[type] = Counter()
        self.adjusted = 0
        self.supplied = 0

    def record(self, message: Message, decision: Decision[Shelf]) -> None:
        if isinstance(message, AdjustStock) and decision.state is not None and decision.rejected is None:
            self.adjusted += message.delta
            self.supplied += max(message.delta, 0)
        for event in decision.messages:
            known = self.events.setdefault(event.event_id, event)
            assert known == event, "one event id, two contents"
            if known is event:  # counted once, however often it is re-emitted
                self.totals[type(event)] += event.quantity  # type: ignore[attr-defined]

    def total(self, kind: type) -> int:
        return self.totals[kind]


_NEXT = {None: "reserve", "reserve": "commit", "commit": "restock"}


def _random_command(rng: random.Random, orders: list[str], sent: list[Message], last: dict[str, str]) -> Message:
    """Mostly each order's next step in saga order, often any step out of order, sometimes a redelivery."""
    if sent and rng.random() < 0.2:
        return rng.choice(sent)
    if rng.random() < 0.15:
        return adjust(rng.randint(-5, 25), event_id=f"adj-{len(sent)}")
    order_id = rng.choice(orders)
    step = _NEXT.get(last.get(order_id), "release") if rng.random() < 0.6 else rng.choice(
        ["reserve", "release", "commit", "restock"]
    )
    if step == "commit" and rng.random() < 0.3:
        step = "release"  # the order was cancelled instead
    last[order_id] = step
    # Two event ids per step and order: a retry of the same step under a new id is a duplicate too.
    event_id = f"{step}-{order_id}-{rng.randint(0, 1)}"
    if step == "reserve":
        return reserve(order_id, quantity=rng.randint(1, 5), event_id=event_id)
    return {"release": release, "commit": commit, "restock": restock}[step](order_id, event_id=event_id)


@pytest.mark.parametrize("seed", range(200))
def test_stock_is_conserved_under_any_interleaving_of_operations_with_duplicates(seed):
    rng = random.Random(seed)
    orders = [f"o-{n}" for n in range(20)]
    product = catalog.decide(None, make(UpsertProduct, sku="A", name="Anvil", unit_price_cents=500,
                                        currency="EUR")).state
    state: Shelf | None = None
    ledger = Ledger()
    sent: list[Message] = []
    last: dict[str, str] = {}
    outcomes: Counter[str] = Counter()
    for step in range(200):
        message = adjust(40, event_id="opening") if step == 0 else _random_command(rng, orders, sent, last)
        sent.append(message)
        decision = stock_decide(state, message, product)
        ledger.record(message, decision)
        outcomes[type(message).__name__ if decision.state and not decision.rejected else "unchanged"] += 1
        if decision.rejected is not None:  # nothing emitted, the counters as they were (a refusal may be noted)
            assert decision.messages == ()
            assert decision.state is None or state is None or decision.state.stock == state.stock
        state = decision.state or state
        if state is None:
            continue
        # I2, after every step, three ways: the counters, the reservations, the events.
        assert state.stock.available >= 0
        assert state.stock.on_hand == state.stock.adjusted - state.stock.sold + state.stock.restocked
        assert state.stock.reserved == sum(res.held for res in state.reservations.values())
        assert state.stock.adjusted == ledger.adjusted
        assert state.stock.on_hand == ledger.adjusted - ledger.total(StockCommitted) + ledger.total(StockRestocked)
        assert state.stock.reserved == (ledger.total(StockReserved) - ledger.total(StockReleased)
                                        - ledger.total(StockCommitted))
        assert state.stock.sold == ledger.total(StockCommitted)
        # I3: what is sold never exceeds what was ever supplied.
        assert state.stock.sold - state.stock.restocked <= ledger.supplied
    # The walk did real work: every kind of step changed the stock at least once.
    assert {"AdjustStock", "ReserveStock", "ReleaseStock", "CommitStock", "RestockItems"} <= set(outcomes)
