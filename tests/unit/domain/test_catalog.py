import itertools

from domain_builders import make

from schemas.messages import AdjustStock, UpsertProduct
from streamcart.domain.catalog import ProductState, decide


def upsert(price: int = 500, *, at: int = 1_000, active: bool = True, **kw) -> UpsertProduct:
    return make(UpsertProduct, sku="A", name="Anvil", unit_price_cents=price, currency="EUR", active=active, at=at,
                **kw)


def test_an_upsert_puts_a_product_in_the_catalog():
    decision = decide(None, upsert())
    assert decision.state is not None
    product = decision.state
    assert (product.sku, product.name, product.unit_price_cents, product.currency, product.active) == (
        "A", "Anvil", 500, "EUR", True,
    )
    assert decision.messages == ()


def test_a_newer_upsert_replaces_the_price_and_can_take_the_product_off_sale():
    product = decide(None, upsert()).state
    newer = decide(product, upsert(700, at=2_000, active=False)).state
    assert newer is not None
    assert (newer.unit_price_cents, newer.active) == (700, False)


def test_the_same_upsert_again_changes_nothing():
    product = decide(None, upsert()).state
    assert decide(product, upsert()).state is None


def test_an_older_upsert_arriving_late_does_not_bring_an_old_price_back():
    product = decide(None, upsert(700, at=2_000)).state
    assert decide(product, upsert(500, at=1_000)).state is None


def test_upserts_at_the_same_time_settle_on_the_same_product_whatever_order_they_arrive_in():
    upserts = [upsert(price, at=1_000, event_id=f"e-{price}") for price in (300, 500, 700)]
    finals = set()
    for order in itertools.permutations(upserts):
        product: ProductState | None = None
        for message in order:
            product = decide(product, message).state or product
        assert product is not None
        finals.add(product.unit_price_cents)
    assert len(finals) == 1


def test_upserts_read_from_the_log_apply_in_log_order_whatever_their_senders_clocks_say():
    """A SKU's upserts share one partition: its log order is the order they were sent in. An admin's clock ten
    minutes fast kept every later update (a price, a withdrawal) out for ten minutes; two in one millisecond were
    ordered by their random ids."""
    fast_clock = decide(None, upsert(1_000, at=600_000, event_id="e-laptop"), 10).state
    later = decide(fast_clock, upsert(2_500, at=1_000, event_id="e-api"), 11).state
    assert later is not None and later.unit_price_cents == 2_500
    withdrawn = decide(later, upsert(2_500, at=1_000, active=False, event_id="e-0"), 12).state
    assert withdrawn is not None and not withdrawn.active
    assert withdrawn.position == 12


def test_an_upsert_read_again_or_older_in_the_log_changes_nothing():
    product = decide(None, upsert(700, at=1_000, event_id="e-2"), 12).state
    assert decide(product, upsert(500, at=5_000, event_id="e-1"), 11).state is None  # a redelivery of an older one
    assert decide(product, upsert(500, at=5_000, event_id="e-1"), 12).state is None
    assert decide(product, upsert(700, at=1_000, event_id="e-2"), 30).state is None  # the same one written again


def test_a_replayed_dead_letter_is_placed_by_its_event_time_not_at_the_end_of_the_log():
    """Written back at the end of the log, out of its place: an old upsert replayed after a newer one must not
    bring an old price back, and the product it makes has no position to order later upserts by."""
    product = decide(None, upsert(700, at=2_000, event_id="e-new"), 12).state
    assert decide(product, upsert(500, at=1_000, event_id="e-old"), 40, replayed=True).state is None
    replayed = decide(product, upsert(900, at=3_000, event_id="e-late"), 41, replayed=True).state
    assert replayed is not None and (replayed.unit_price_cents, replayed.position) == (900, 41)
    # The log goes on after it, whatever the clocks: the next upsert sent applies, a redelivered older one not.
    assert decide(replayed, upsert(500, at=2_500, event_id="e-13"), 13).state is None
    after = decide(replayed, upsert(1_100, at=2_500, event_id="e-42"), 42).state
    assert after is not None and after.unit_price_cents == 1_100


def test_a_product_stored_before_positions_were_kept_takes_the_next_upsert_read_from_the_log():
    """Even one stuck behind a future event time (the clock this fixes): the log read in order ends where it ends."""
    stuck = ProductState(sku="A", name="Anvil", unit_price_cents=1_000, currency="EUR", active=True,
                         updated={"event_id": "e-laptop", "at": 600_000})
    later = decide(stuck, upsert(2_500, at=1_000, event_id="e-api"), 50).state
    assert later is not None and (later.unit_price_cents, later.position) == (2_500, 50)


def test_the_catalog_rejects_what_it_does_not_handle():
    decision = decide(None, make(AdjustStock, sku="A", delta=1, reason="x"))
    assert decision.rejected == "catalog does not handle AdjustStock"


def test_a_replay_read_again_after_later_upserts_changes_nothing():
    product = decide(None, upsert(700, at=2_000, event_id="e-new"), 12).state
    replayed = decide(product, upsert(900, at=5_000, event_id="e-fast"), 40, replayed=True).state
    later = decide(replayed, upsert(1_100, at=3_000, event_id="e-41"), 41).state
    assert later is not None and later.unit_price_cents == 1_100
    assert decide(later, upsert(900, at=5_000, event_id="e-fast"), 40, replayed=True).state is None  # redelivered
