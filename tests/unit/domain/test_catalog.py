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


def test_the_catalog_rejects_what_it_does_not_handle():
    decision = decide(None, make(AdjustStock, sku="A", delta=1, reason="x"))
    assert decision.rejected == "catalog does not handle AdjustStock"
