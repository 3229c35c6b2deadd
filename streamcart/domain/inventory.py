"""Stock and reservations, keyed by sku (DESIGN.md §3 step 2, invariant I2).

Two pieces of state, both in the SKU's partition: one :class:`StockState` per SKU (the counters) and one
:class:`Reservation` per (SKU, order), stored under :func:`reservation_key`. They are kept apart so that a write
stays small however many orders a SKU has ever had (one value holding every reservation of a best seller would
grow without end, and with it every changelog record). :func:`decide` applies AdjustStock and the saga's
ReserveStock / ReleaseStock / CommitStock / RestockItems to the pair and returns both in a :class:`StockChange`.

- AdjustStock changes ``on_hand``; a delta that would make ``available`` negative is refused (``rejected``):
  stock promised to orders cannot be written off from under them. The refusal is noted in the SKU's
  :class:`AdjustmentMemory` (the state of a refused decision): the API answers it to whoever asks for that
  adjustment, and a redelivery is refused again however the stock moved since.
- ReserveStock holds ``quantity`` at the **catalog price at reservation time** (StockReserved) unless the product
  is missing or inactive, priced in another currency (StockRejected ``product_unavailable`` with a detail), or
  ``available`` is short (StockRejected ``out_of_stock`` with what is available).
- ReleaseStock gives a hold back; CommitStock turns it into sold (``on_hand`` and ``reserved`` both drop);
  RestockItems puts what was sold back on hand.

Idempotency: every operation is idempotent by (order, sku): a reservation records the cause of each step, and a
step that has happened re-emits its events (same ids) whatever event id the repeat carries. AdjustStock, which
has no such natural key, is deduplicated by event id against the last :data:`ADJUSTMENT_MEMORY` adjustments (a
redelivery comes soon after the original; an unbounded set would grow for ever). Those ids, each with a digest of
what it said (:func:`adjustment_body`: the API answers 409 to a key reused for another adjustment, and a command
that slips past it is refused, not applied), are a third record of the SKU (:class:`AdjustmentMemory`, under
:func:`adjustments_key`), read and written only by adjustments: in the counters, which every reservation writes, a
SKU restocked often would carry some 60 KB into each write.

Out of order: a ReleaseStock for a reservation not seen yet leaves a tombstone (StockReleased, quantity 0), and the
ReserveStock arriving after it holds nothing (StockRejected ``released``). A RestockItems that overtakes its
CommitStock commits and restocks in one step (StockCommitted and StockRestocked), so the events always account for
the counters: ``on_hand = Σ adjustments - Σ StockCommitted + Σ StockRestocked`` and
``reserved = Σ StockReserved - Σ StockReleased - Σ StockCommitted``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from schemas.messages import (
    AdjustStock,
    CommitStock,
    ForgetReservation,
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
)
from streamcart.domain.catalog import ProductState
from streamcart.domain.causes import Cause, caused, derived
from streamcart.domain.decision import Decision
from streamcart.ids import derive_id

#: How many recent AdjustStock event ids a SKU remembers to drop redeliveries.
ADJUSTMENT_MEMORY = 1_000
#: How many recent refused adjustments a SKU remembers (with their reasons: each is longer than an id, and a
#: refusal is rare: it lost a race with orders the API could not see yet).
REFUSED_ADJUSTMENTS = 100

ReservationCommand = ReserveStock | ReleaseStock | CommitStock | RestockItems


class ReservationStatus:
    RESERVED = "reserved"
    REJECTED = "rejected"
    RELEASED = "released"
    COMMITTED = "committed"
    RESTOCKED = "restocked"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class StockState(_Model):
    """One SKU's counters. ``adjusted``, ``sold`` and ``restocked`` are running totals, kept to check I2."""

    sku: str
    on_hand: int = 0
    reserved: int = 0
    adjusted: int = 0
    sold: int = 0
    restocked: int = 0
    #: The event id of the SKU's latest adjustment; the ones before it are in its :class:`AdjustmentMemory`.
    last_adjustment: str | None = None
    #: What the latest adjustment said (:func:`adjustment_body`): a repeat of its key with another body is told apart.
    last_adjustment_body: str | None = None
    #: Where a stock stored before the memory had a record of its own kept every id: still honoured, and moved into
    #: the memory by the SKU's next adjustment.
    recent_adjustments: tuple[str, ...] = ()
    #: The reservation the same command wrote (see :func:`current_reservation`).
    last_reservation: Reservation | None = None

    @property
    def available(self) -> int:
        """What a new reservation can take."""
        return self.on_hand - self.reserved


class RefusedAdjustment(_Model):
    """An adjustment the SKU refused: what it said (:func:`adjustment_body`) and why."""

    event_id: str
    body: str
    reason: str


class AdjustmentMemory(_Model):
    """The event ids of a SKU's recent adjustments before its latest one (``StockState.last_adjustment``), oldest
    first, and what each said (:func:`adjustment_body`): ``bodies`` runs beside ``event_ids``, and is empty in a
    record stored before bodies were kept. ``refused``: the last :data:`REFUSED_ADJUSTMENTS` adjustments refused,
    oldest first (empty in a record stored before refusals were kept)."""

    sku: str
    event_ids: tuple[str, ...] = ()
    bodies: tuple[str | None, ...] = ()
    refused: tuple[RefusedAdjustment, ...] = ()

    def knows(self, event_id: str) -> bool:
        return event_id in self.event_ids

    def body_of(self, event_id: str) -> str | None:
        """What the remembered adjustment ``event_id`` said (``None``: not kept)."""
        aligned = len(self.bodies) == len(self.event_ids)
        return self.bodies[self.event_ids.index(event_id)] if aligned else None

    def entries(self) -> dict[str, str | None]:
        """Each remembered event id and what it said (``None``: not kept), oldest first."""
        bodies = self.bodies if len(self.bodies) == len(self.event_ids) else (None,) * len(self.event_ids)
        return dict(zip(self.event_ids, bodies, strict=True))

    def refusal_of(self, event_id: str) -> RefusedAdjustment | None:
        """The remembered refusal of the adjustment ``event_id`` (``None``: not refused, or forgotten)."""
        return next((refusal for refusal in self.refused if refusal.event_id == event_id), None)

    def refusing(self, refusal: RefusedAdjustment) -> AdjustmentMemory:
        """This memory with ``refusal`` noted as the latest (the oldest forgotten beyond the bound)."""
        return self.model_copy(update={"refused": (*self.refused, refusal)[-REFUSED_ADJUSTMENTS:]})


class Rejection(_Model):
    """Why a reservation was refused, kept so a repeat re-emits the same StockRejected."""

    reason: str
    available: int
    detail: str | None = None


class Reservation(_Model):
    """One order's claim on one SKU, with the cause of each step it went through."""

    sku: str
    order_id: str
    quantity: int
    status: str
    unit_price_cents: int | None = None
    currency: str | None = None
    rejection: Rejection | None = None
    reserved: Cause | None = None
    released: Cause | None = None
    committed: Cause | None = None
    restocked: Cause | None = None

    @property
    def held(self) -> int:
        """What this reservation holds out of ``available`` now."""
        return self.quantity if self.status == ReservationStatus.RESERVED else 0


StockState.model_rebuild()


class StockChange(_Model):
    """What one inventory command leaves behind: the SKU's counters and, for a saga step, the reservation."""

    stock: StockState
    reservation: Reservation | None = None
    adjustments: AdjustmentMemory | None = None


Record = StockState | Reservation | AdjustmentMemory


def records(
    stock: StockState | None,
    stored: Callable[[str], Reservation | None],
    message: Message,
    *,
    product: ProductState | None,
    remembered: Callable[[str], AdjustmentMemory | None] = lambda key: None,
) -> tuple[Decision[StockChange], tuple[tuple[str, Record], ...]]:
    """Decide ``message`` and say which records to store, in order, under which keys.

    ``stock`` is the SKU's record, ``stored(key)`` reads a reservation record. A command changes the SKU's
    counters and the order's reservation: two records, kept in one table so that one changelog partition keeps
    them in order and a crash leaves a prefix of the writes. The SKU record goes first and carries the
    reservation too (``last_reservation``), so a prefix that ends between the two still knows the reservation
    from the record that counted it: the counters and the reservations never disagree. Before the SKU record
    stops carrying a reservation, that reservation is written under its own key if it is not there yet.

    An adjustment writes its memory of earlier adjustments first, then the counters naming it as the latest: a
    prefix that ends between the two knows every adjustment it applied, and the one it did not apply yet is in
    neither record. A refused adjustment writes its memory alone (the refusal noted; the counters do not change).

    A redelivery (nothing to change) stores the current records again: a worker killed before its changelog
    records left would otherwise keep a changelog that is behind for good. ``remembered(key)`` reads an
    :class:`AdjustmentMemory` (only adjustments ask).
    """
    if isinstance(message, AdjustStock):
        memory = remembered(adjustments_key(message.sku))
        decision = decide(stock, None, message, product=product, adjustments=memory)
        if decision.state is not None:
            stock, memory = decision.state.stock, decision.state.adjustments
        writes: list[tuple[str, Record]] = [] if memory is None else [(adjustments_key(message.sku), memory)]
        if decision.rejected is not None:  # the counters did not change (a SKU never stocked gets none)
            return decision, tuple(writes)
        return decision, (*writes, *([] if stock is None else [(stock.sku, stock)]))
    order_id = getattr(message, "order_id", None)
    key = reservation_key(message.sku, order_id) if order_id else None  # type: ignore[attr-defined]
    last = stock.last_reservation if stock is not None else None
    carried = reservation_key(last.sku, last.order_id) if last is not None else None
    reservation = last if key is not None and carried == key else (stored(key) if key else None)
    decision = decide(stock, reservation, message, product=product)
    if decision.rejected is not None:
        return decision, ()
    if decision.state is not None:
        stock, reservation = decision.state.stock, decision.state.reservation
    writes = []
    if stock is not None:
        if key is not None and reservation is not None:
            if last is not None and carried is not None and carried != key and stored(carried) != last:
                writes.append((carried, last))
            stock = stock.model_copy(update={"last_reservation": reservation})
        writes.append((stock.sku, stock))
    if key is not None and reservation is not None:
        writes.append((key, reservation))
    return decision, tuple(writes)


@dataclass(frozen=True)
class Forgotten:
    """What forgetting a reservation (its order's retention ran out) writes: the counters again without carrying
    it (``stock``, when they do), then a delete of its own key (``delete``); ``refused`` says why not."""

    stock: StockState | None = None
    delete: bool = False
    refused: str | None = None


def forget(stock: StockState | None, stored: Reservation | None, cmd: ForgetReservation) -> Forgotten:
    """Forget ``cmd.order_id``'s reservation of ``cmd.sku`` (``stored``: its record, ``None`` if gone already).

    A reservation that still holds stock is kept (and refused): its order would not have been forgotten while a
    line was in flight, so this is a bug to see, not a case to handle. The counters stop carrying it
    (``last_reservation``) before its key goes: otherwise the SKU's next command would write it back.
    """
    last = stock.last_reservation if stock is not None else None
    carried = last is not None and (last.sku, last.order_id) == (cmd.sku, cmd.order_id)
    reservation = stored if stored is not None else (last if carried else None)
    if reservation is None:
        return Forgotten()
    if reservation.held:
        return Forgotten(refused=f"order {cmd.order_id}'s reservation of {cmd.sku} still holds {reservation.held}")
    kept = stock.model_copy(update={"last_reservation": None}) if carried and stock is not None else None
    return Forgotten(stock=kept, delete=stored is not None)


def reservation_key(sku: str, order_id: str) -> str:
    """The table key of ``order_id``'s reservation of ``sku`` (it lives in the SKU's partition)."""
    return f"{sku}/{order_id}"


def adjustments_key(sku: str) -> str:
    """The table key of ``sku``'s :class:`AdjustmentMemory` (see :func:`keyable`)."""
    return f"{sku}#adjustments"


def adjustment_id(sku: str, key: str) -> str:
    """The event id of the adjustment of ``sku`` sent under the client's idempotency ``key``."""
    return derive_id("adjustment", sku, key)


def adjustment_body(delta: int, reason: str) -> str:
    """A short digest of what an adjustment says: two requests under one key that differ in it conflict."""
    return hashlib.sha256(f"{delta}\x1f{reason}".encode()).hexdigest()[:16]


def keyable(sku: str) -> bool:
    """Whether ``sku`` can key the stock table: with a ``/`` or a ``#`` in it, its counters could meet another SKU's
    reservation or adjustment memory (the API accepts no such SKU; a command sent past it is dead-lettered)."""
    return bool(sku) and "/" not in sku and "#" not in sku


def decide(
    stock: StockState | None,
    reservation: Reservation | None,
    message: Message,
    *,
    product: ProductState | None,
    adjustments: AdjustmentMemory | None = None,
) -> Decision[StockChange]:
    """Apply one inventory command to a SKU's counters and to the order's reservation of it.

    ``stock`` is ``None`` for a SKU never stocked, ``reservation`` the one stored under
    ``reservation_key(message.sku, message.order_id)`` (``None`` for AdjustStock and for a reservation not seen
    yet), ``product`` the SKU's catalog entry (only ReserveStock reads it), ``adjustments`` the SKU's memory of
    earlier adjustments (only AdjustStock reads it). ``rejected`` is set, with nothing emitted, for an adjustment
    that would make ``available`` negative (the state then notes the refusal in the memory, the counters as they
    were) and for a step that cannot follow the reservation's state (e.g. committing stock that was released:
    nothing changed).
    """
    counters = stock if stock is not None else StockState(sku=getattr(message, "sku", ""))
    if isinstance(message, AdjustStock):
        return _adjust(counters, adjustments or AdjustmentMemory(sku=counters.sku), message)
    if not isinstance(message, ReservationCommand):
        return Decision(state=None, rejected=f"inventory does not handle {type(message).__name__}")
    if reservation is not None and (reservation.sku, reservation.order_id) != (message.sku, message.order_id):
        return Decision(state=None, rejected=f"reservation {reservation_key(reservation.sku, reservation.order_id)} "
                                             f"given for {reservation_key(message.sku, message.order_id)}")
    match message:
        case ReserveStock():
            return _reserve(counters, reservation, message, product)
        case ReleaseStock():
            return _release(counters, reservation, message)
        case CommitStock():
            return _commit(counters, reservation, message)
        case RestockItems():
            return _restock(counters, reservation, message)


def effects_of(res: Reservation, cause_id: str) -> tuple[Message, ...]:
    """The events the message ``cause_id`` made this reservation emit."""
    ids = {"order_id": res.order_id, "sku": res.sku}
    out: list[Message] = []
    if caused(res.reserved, cause_id):
        if res.rejection is not None:
            out.append(StockRejected(
                **derived(res.reserved, res.order_id, StockRejected, res.sku), **ids, quantity=res.quantity,
                reason=res.rejection.reason, available=res.rejection.available, detail=res.rejection.detail,
            ))
        else:
            out.append(StockReserved(
                **derived(res.reserved, res.order_id, StockReserved, res.sku), **ids, quantity=res.quantity,
                unit_price_cents=res.unit_price_cents or 0, currency=res.currency or "",
            ))
    if caused(res.released, cause_id):
        # A tombstone (released before it was reserved) released nothing.
        released = res.quantity if res.reserved is not None and res.rejection is None else 0
        out.append(StockReleased(**derived(res.released, res.order_id, StockReleased, res.sku), **ids,
                                 quantity=released))
    if caused(res.committed, cause_id):
        out.append(StockCommitted(**derived(res.committed, res.order_id, StockCommitted, res.sku), **ids,
                                  quantity=res.quantity))
    if caused(res.restocked, cause_id):
        out.append(StockRestocked(**derived(res.restocked, res.order_id, StockRestocked, res.sku), **ids,
                                  quantity=res.quantity))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AdjustmentOutcome:
    """What became of an adjustment: the SKU's stock counts it (``refused`` is ``None``), or the inventory refused it
    (``refused``: why). ``body`` is what it said (:func:`adjustment_body`; ``None`` when it was stored before bodies
    were kept)."""

    body: str | None
    refused: str | None = None


def adjustment_outcome(
    stock: StockState | None, memory: AdjustmentMemory | None, event_id: str
) -> AdjustmentOutcome | None:
    """What became of the adjustment ``event_id``: counted by ``stock`` (one of its last :data:`ADJUSTMENT_MEMORY`),
    refused (one of its last :data:`REFUSED_ADJUSTMENTS` refusals), or ``None``: not decided yet, or forgotten."""
    if stock is not None:
        if stock.last_adjustment == event_id:
            return AdjustmentOutcome(stock.last_adjustment_body)
        if event_id in stock.recent_adjustments:
            return AdjustmentOutcome(None)
        if memory is not None and memory.knows(event_id):
            return AdjustmentOutcome(memory.body_of(event_id))
    if memory is not None and (refusal := memory.refusal_of(event_id)) is not None:
        return AdjustmentOutcome(refusal.body, refused=refusal.reason)
    return None


def _adjust(stock: StockState, memory: AdjustmentMemory, cmd: AdjustStock) -> Decision[StockChange]:
    said = adjustment_body(cmd.delta, cmd.reason)
    # Decided once: a redelivery is dropped if it was applied and refused again if it was refused, whatever the
    # stock is now (the key's first body counts: a refused key does not apply later, the admin sends a new one).
    if (outcome := adjustment_outcome(stock, memory, cmd.event_id)) is not None:
        if outcome.body is not None and outcome.body != said:  # its key was used for another adjustment
            how = "applied" if outcome.refused is None else "refused"
            return Decision(state=None, rejected=(
                f"adjustment {cmd.event_id} of {stock.sku} was {how} with another delta or reason; "
                f"this one (by {cmd.delta}, {cmd.reason!r}) is dropped"
            ))
        return Decision(state=None, rejected=outcome.refused)
    if stock.available + cmd.delta < 0:
        reason = (f"adjusting {stock.sku} by {cmd.delta} would leave {stock.available + cmd.delta} available "
                  f"(on hand {stock.on_hand}, reserved {stock.reserved})")
        refusal = RefusedAdjustment(event_id=cmd.event_id, body=said, reason=reason)
        return Decision(state=StockChange(stock=stock, adjustments=memory.refusing(refusal)), rejected=reason)
    adjusted = stock.model_copy(update={
        "on_hand": stock.on_hand + cmd.delta,
        "adjusted": stock.adjusted + cmd.delta,
        "last_adjustment": cmd.event_id,
        "last_adjustment_body": said,
        "recent_adjustments": (),
    })
    # Once each, oldest first: a crash may have kept the memory's write and lost the counters' (records() writes
    # them in turn), so what the counters still name can be in the memory already.
    entries = memory.entries()
    for event_id in stock.recent_adjustments:
        entries.setdefault(event_id, None)
    if stock.last_adjustment is not None:
        entries.setdefault(stock.last_adjustment, stock.last_adjustment_body)
    earlier = tuple(entries)[-(ADJUSTMENT_MEMORY - 1):]
    if earlier == memory.event_ids:  # the SKU's first adjustment: nothing earlier to remember
        return Decision(state=StockChange(stock=adjusted))
    bodies = tuple(entries[event_id] for event_id in earlier)
    return Decision(state=StockChange(stock=adjusted, adjustments=memory.model_copy(
        update={"event_ids": earlier, "bodies": bodies})))


def _reserve(
    stock: StockState, known: Reservation | None, cmd: ReserveStock, product: ProductState | None
) -> Decision[StockChange]:
    if known is not None and known.reserved is not None:
        return _again(known, known.reserved)
    cause = Cause.of(cmd)
    if known is not None:
        # Released before this reservation arrived: the order no longer wants it, so hold nothing.
        tombstone = known.model_copy(update={
            "quantity": cmd.quantity, "reserved": cause,
            "rejection": Rejection(reason=StockRejection.RELEASED, available=stock.available,
                                   detail="the order released this line before its reservation arrived"),
        })
        return _emitting(stock, tombstone, cmd)
    match _assess(stock, cmd, product):
        case Rejection() as refusal:
            rejected = Reservation(sku=cmd.sku, order_id=cmd.order_id, quantity=cmd.quantity,
                                   status=ReservationStatus.REJECTED, rejection=refusal, reserved=cause)
            return _emitting(stock, rejected, cmd)
        case priced:
            held = Reservation(sku=cmd.sku, order_id=cmd.order_id, quantity=cmd.quantity,
                               status=ReservationStatus.RESERVED, reserved=cause,
                               unit_price_cents=priced.unit_price_cents, currency=priced.currency)
            return _emitting(stock.model_copy(update={"reserved": stock.reserved + cmd.quantity}), held, cmd)


def _assess(stock: StockState, cmd: ReserveStock, product: ProductState | None) -> ProductState | Rejection:
    """The catalog entry the reservation is priced from, or why there is none to be had."""
    unavailable = StockRejection.PRODUCT_UNAVAILABLE
    if product is None:
        return Rejection(reason=unavailable, available=stock.available, detail=f"unknown sku {cmd.sku}")
    if not product.active:
        return Rejection(reason=unavailable, available=stock.available, detail=f"{cmd.sku} is not on sale")
    if product.currency != cmd.currency:
        # Prices are never converted: an order is paid in one currency and the catalog price is the price.
        return Rejection(reason=unavailable, available=stock.available,
                         detail=f"{cmd.sku} is priced in {product.currency}, the order is in {cmd.currency}")
    if stock.available < cmd.quantity:
        return Rejection(reason=StockRejection.OUT_OF_STOCK, available=stock.available)
    return product


def _release(stock: StockState, res: Reservation | None, cmd: ReleaseStock) -> Decision[StockChange]:
    if res is None:
        tombstone = Reservation(sku=cmd.sku, order_id=cmd.order_id, quantity=0, status=ReservationStatus.RELEASED,
                                released=Cause.of(cmd))
        return _emitting(stock, tombstone, cmd)
    if res.released is not None:
        return _again(res, res.released)
    if res.status == ReservationStatus.REJECTED:
        return Decision(state=None)  # nothing was held
    if res.status != ReservationStatus.RESERVED:
        return _refused("release", cmd, res)
    released = res.model_copy(update={"status": ReservationStatus.RELEASED, "released": Cause.of(cmd)})
    return _emitting(stock.model_copy(update={"reserved": stock.reserved - res.quantity}), released, cmd)


def _commit(stock: StockState, res: Reservation | None, cmd: CommitStock) -> Decision[StockChange]:
    if res is not None and res.committed is not None:
        return _again(res, res.committed)
    if res is None or res.status != ReservationStatus.RESERVED:
        return _refused("commit", cmd, res)
    return _emitting(*_committed(stock, res, Cause.of(cmd)), cmd)


def _restock(stock: StockState, res: Reservation | None, cmd: RestockItems) -> Decision[StockChange]:
    if res is not None and res.restocked is not None:
        return _again(res, res.restocked)
    if res is not None and res.status == ReservationStatus.RESERVED:
        # The restock overtook its commit: commit now, so the events keep accounting for the counters.
        stock, res = _committed(stock, res, Cause.of(cmd))
    if res is None or res.status != ReservationStatus.COMMITTED:
        return _refused("restock", cmd, res)
    restocked = res.model_copy(update={"status": ReservationStatus.RESTOCKED, "restocked": Cause.of(cmd)})
    stock = stock.model_copy(update={
        "on_hand": stock.on_hand + res.quantity, "restocked": stock.restocked + res.quantity,
    })
    return _emitting(stock, restocked, cmd)


def _committed(stock: StockState, res: Reservation, cause: Cause) -> tuple[StockState, Reservation]:
    committed = res.model_copy(update={"status": ReservationStatus.COMMITTED, "committed": cause})
    stock = stock.model_copy(update={
        "on_hand": stock.on_hand - res.quantity,
        "reserved": stock.reserved - res.quantity,
        "sold": stock.sold + res.quantity,
    })
    return stock, committed


def _refused(step: str, cmd: ReservationCommand, res: Reservation | None) -> Decision[StockChange]:
    status = res.status if res is not None else "not reserved"
    return Decision(state=None, rejected=f"cannot {step} {reservation_key(cmd.sku, cmd.order_id)}: it is {status}")


def _emitting(stock: StockState, res: Reservation, cmd: ReservationCommand) -> Decision[StockChange]:
    return Decision(state=StockChange(stock=stock, reservation=res), messages=effects_of(res, cmd.event_id))


def _again(res: Reservation, cause: Cause) -> Decision[StockChange]:
    """A step that has happened already: nothing changes, its events go out again."""
    return Decision(state=None, messages=effects_of(res, cause.event_id))
