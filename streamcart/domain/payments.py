"""Payments, keyed by order_id (DESIGN.md §3 step 4, invariant I4).

The gateway call is I/O, so a payment command is decided in two pure steps around it:

1. :func:`plan` says what to ask the gateway (a :class:`GatewayCall`), or, when no call is needed (the step has
   happened, or there is nothing to do), returns the :class:`Decision` straight away;
2. :func:`apply_result` turns the gateway's answer (a :class:`GatewayResult`) into the new record and its events.

The order id is the gateway's idempotency key, so one order has at most one authorization there. Every operation
is idempotent by order: a repeat of AuthorizePayment, CapturePayment, VoidPayment or RefundPayment whose step has
happened re-emits that step's event (same event id) and calls nothing.

Decisions where DESIGN.md is silent:

- An authorization the gateway could not answer (``unavailable``; the flow tries again until the order's
  deadline, agents/payments.py): the outcome is unknown (the gateway may have approved
  after the client gave up), so the payment is declined to the saga (PaymentDeclined ``gateway_unavailable``) and
  a VoidPayment is sent to this flow itself. Its plan is a void *by idempotency key* (``authorization_id`` None):
  the client finds the authorization by re-sending the same keyed request and voids it if it was approved; it
  settles with nothing voided only when the gateway says the authorization holds no money (:data:`NOTHING_HELD`).
  Either way the order nets to zero; a lookup or void the gateway refuses is dead-lettered with the reason.
- A void or refund of a payment never authorized records a tombstone and emits nothing (no money moved, so there
  is nothing to report); an AuthorizePayment arriving after it is not sent to the gateway but declined
  (``cancelled_before_authorization``).
- A capture, void or refund the gateway cannot do now (``unavailable``) or refuses is ``rejected``: the record is
  unchanged. The flow tries an unavailable one again until it is done; a refused one is dead-lettered with the
  reason, and a replay does it. Compensations are never silently dropped.
- Capture after the money went back (voided or refunded), void or refund of a declined payment: nothing to do.
  Void of a captured payment is refused (a captured payment is refunded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from schemas.messages import (
    AuthorizePayment,
    CapturePayment,
    Message,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentCommand,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    VoidPayment,
)
from streamcart.domain.causes import Cause, caused, derived
from streamcart.domain.decision import Decision

#: PaymentDeclined reasons this flow gives itself (others come from the gateway: card_declined, ...).
GATEWAY_UNAVAILABLE = "gateway_unavailable"
#: A void by idempotency key found its authorization captured: the money was taken, not held, and a void cannot
#: return it. The saga never captures what it voids (its record would say so), so this is for a person to look at.
AUTHORIZATION_CAPTURED = "authorization_captured"
CANCELLED_BEFORE_AUTHORIZATION = "cancelled_before_authorization"
#: What the gateway may say of an authorization that holds no money, and the reason a void by key then settles with
#: (nothing to give back). Any other refusal of a void by key (the lookup refused, the void refused) is not found
#: out: it is dead-lettered for a person, never settled as nothing held.
NOTHING_HELD = {"declined": "authorization_declined", "voided": "authorization_voided",
                "refunded": "authorization_refunded"}

Operation = Literal["authorize", "capture", "void", "refund"]


class Outcome:
    """What the gateway answered: done, refused, or no answer after the client's retries."""

    APPROVED = "approved"
    DECLINED = "declined"
    UNAVAILABLE = "unavailable"


class PaymentStatus:
    NEW = "new"
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    #: The authorization's outcome is unknown (retries exhausted); a void by idempotency key settles it.
    UNKNOWN = "unknown"
    CAPTURED = "captured"
    VOIDED = "voided"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """One gateway operation to perform. ``idempotency_key`` is the order id.

    For ``void`` with ``authorization_id`` None, the authorization is found by its idempotency key (re-send the
    authorization with ``idempotency_key``, ``amount_cents``, ``currency`` and ``payment_token``) and voided if
    approved.
    """

    operation: Operation
    idempotency_key: str
    amount_cents: int
    currency: str
    payment_token: str | None = None
    authorization_id: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """The gateway's answer to a :class:`GatewayCall`, as the client saw it after its retries."""

    outcome: str
    authorization_id: str | None = None
    reason: str | None = None
    #: In words, for a person: what the client met (an unavailable result's last failure), or ``None``.
    detail: str | None = None

    @classmethod
    def approved(cls, authorization_id: str) -> GatewayResult:
        return cls(outcome=Outcome.APPROVED, authorization_id=authorization_id)

    @classmethod
    def declined(cls, reason: str) -> GatewayResult:
        return cls(outcome=Outcome.DECLINED, reason=reason)

    @classmethod
    def unavailable(cls, reason: str = GATEWAY_UNAVAILABLE, detail: str | None = None) -> GatewayResult:
        return cls(outcome=Outcome.UNAVAILABLE, reason=reason, detail=detail)


class Authorization(BaseModel):
    """What the gateway answered to the order's authorization (or what this flow decided instead)."""

    model_config = ConfigDict(frozen=True)

    cause: Cause
    outcome: str
    authorization_id: str | None = None
    reason: str | None = None


class Settlement(BaseModel):
    """A capture, void or refund that is done; ``authorization_id`` None: nothing was held, nothing was moved."""

    model_config = ConfigDict(frozen=True)

    cause: Cause
    authorization_id: str | None = None


class PaymentState(BaseModel):
    """One order's payment."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    amount_cents: int = 0
    currency: str | None = None
    payment_token: str | None = None
    authorization: Authorization | None = None
    captured: Settlement | None = None
    voided: Settlement | None = None
    refunded: Settlement | None = None

    @property
    def status(self) -> str:
        """The latest step: money returned beats captured beats the authorization's outcome."""
        if self.refunded is not None:
            return PaymentStatus.REFUNDED
        if self.voided is not None:
            return PaymentStatus.VOIDED
        if self.captured is not None:
            return PaymentStatus.CAPTURED
        if self.authorization is None:
            return PaymentStatus.NEW
        return {
            Outcome.APPROVED: PaymentStatus.AUTHORIZED,
            Outcome.DECLINED: PaymentStatus.DECLINED,
        }.get(self.authorization.outcome, PaymentStatus.UNKNOWN)

    @property
    def authorization_id(self) -> str | None:
        return self.authorization.authorization_id if self.authorization is not None else None


def plan(state: PaymentState | None, command: Message) -> GatewayCall | Decision[PaymentState]:
    """What ``command`` needs from the gateway, or its decision when it needs nothing (a repeat, a no-op)."""
    match command:
        case AuthorizePayment():
            return _plan_authorize(state, command)
        case CapturePayment():
            return _plan_capture(state, command)
        case VoidPayment():
            return _plan_void(state, command)
        case RefundPayment():
            return _plan_refund(state, command)
    return Decision(state=None, rejected=f"payments does not handle {type(command).__name__}")


def apply_result(state: PaymentState | None, command: PaymentCommand, result: GatewayResult) -> Decision[PaymentState]:
    """Record what the gateway answered to ``plan(state, command)`` and emit the events that follow.

    ``state`` must be the record the call was planned from. If the command no longer needs the call (the same
    step was applied in between), the result is ignored and the repeat's decision is returned.
    """
    call = plan(state, command)
    if not isinstance(call, GatewayCall):
        return call
    cause = Cause.of(command)
    if isinstance(command, AuthorizePayment):
        return _emitting(_authorized(command, result, cause), cause)
    if state is None:  # unreachable: plan calls the gateway for these only on a record with an authorization
        return Decision(state=None, rejected=f"no payment record for {command.order_id}")
    if result.outcome == Outcome.UNAVAILABLE:
        why = result.reason if result.detail is None else f"{result.reason}: {result.detail}"
        return Decision(state=None, rejected=f"payment gateway unavailable: {call.operation} of {state.order_id} "
                                             f"not done ({why})")
    if result.outcome != Outcome.APPROVED:
        if call.operation == "void" and result.reason == AUTHORIZATION_CAPTURED:
            return Decision(state=None, rejected=f"the void by key of {state.order_id} found its authorization "
                                                 f"captured: the money was taken, and a void cannot return it "
                                                 f"(a person must refund it at the gateway)")
        if call.operation == "void" and call.authorization_id is None and result.reason in NOTHING_HELD.values():
            # The unknown authorization turned out not to hold any money: settled with nothing to void.
            return _emitting(state.model_copy(update={"voided": Settlement(cause=cause)}), cause)
        return Decision(state=None, rejected=f"payment gateway refused to {call.operation} "
                                             f"{state.order_id}: {result.reason}")
    done = Settlement(cause=cause, authorization_id=result.authorization_id or state.authorization_id)
    field = {"capture": "captured", "void": "voided", "refund": "refunded"}[call.operation]
    return _emitting(state.model_copy(update={field: done}), cause)


def effects_of(state: PaymentState, cause_id: str) -> tuple[Message, ...]:
    """The messages the command ``cause_id`` made this payment emit."""
    order_id, currency = state.order_id, state.currency or ""
    money = {"order_id": order_id, "amount_cents": state.amount_cents, "currency": currency}
    out: list[Message] = []
    auth = state.authorization
    if auth is not None and caused(auth.cause, cause_id):
        if auth.outcome == Outcome.APPROVED:
            out.append(PaymentAuthorized(**derived(auth.cause, order_id, PaymentAuthorized), **money,
                                         authorization_id=auth.authorization_id or ""))
        else:
            out.append(PaymentDeclined(**derived(auth.cause, order_id, PaymentDeclined), **money,
                                       reason=auth.reason or Outcome.DECLINED))
        if auth.outcome == Outcome.UNAVAILABLE:
            out.append(VoidPayment(**derived(auth.cause, order_id, VoidPayment), order_id=order_id,
                                   reason=GATEWAY_UNAVAILABLE))
    settlements = ((state.captured, PaymentCaptured), (state.voided, PaymentVoided), (state.refunded, PaymentRefunded))
    for done, kind in settlements:
        # A settlement without an authorization (a tombstone, an unknown authorization that held nothing)
        # moved no money, so there is nothing to report.
        if done is not None and done.authorization_id is not None and caused(done.cause, cause_id):
            out.append(kind(**derived(done.cause, order_id, kind), **money, authorization_id=done.authorization_id))
    return tuple(out)


def _plan_authorize(state: PaymentState | None, cmd: AuthorizePayment) -> GatewayCall | Decision[PaymentState]:
    if state is not None and state.authorization is not None:
        return _again(state, state.authorization.cause)
    if state is not None:
        # Voided or refunded before the authorization arrived: the order is gone; do not take its money.
        refused = Authorization(cause=Cause.of(cmd), outcome=Outcome.DECLINED, reason=CANCELLED_BEFORE_AUTHORIZATION)
        return _emitting(_with_request(state, cmd).model_copy(update={"authorization": refused}), Cause.of(cmd))
    return GatewayCall(operation="authorize", idempotency_key=cmd.order_id, amount_cents=cmd.amount_cents,
                       currency=cmd.currency, payment_token=cmd.payment_token)


def _plan_capture(state: PaymentState | None, cmd: CapturePayment) -> GatewayCall | Decision[PaymentState]:
    if state is not None and state.captured is not None:
        return _again(state, state.captured.cause)
    status = state.status if state is not None else PaymentStatus.NEW
    if state is not None and status == PaymentStatus.AUTHORIZED:
        return _call("capture", state)
    if status in (PaymentStatus.VOIDED, PaymentStatus.REFUNDED):
        return Decision(state=None)  # the money went back already: it must not be taken now
    return Decision(state=None, rejected=f"cannot capture {cmd.order_id}: payment is {status}")


def _plan_void(state: PaymentState | None, cmd: VoidPayment) -> GatewayCall | Decision[PaymentState]:
    if state is not None and state.voided is not None:
        return _again(state, state.voided.cause)
    if state is None or state.authorization is None:
        return _tombstone(state, cmd, "voided")
    match state.status:
        case PaymentStatus.AUTHORIZED | PaymentStatus.CAPTURED if _for_an_unknown_authorization(cmd):
            # The flow's own void of an authorization it had no answer for, meeting one with an answer (only a
            # worker that lost its partition yet wrote on could make that): the orders flow, which knows whether
            # the order was confirmed, voids an authorization it does not want.
            return Decision(state=None)
        case PaymentStatus.AUTHORIZED:
            return _call("void", state)
        case PaymentStatus.UNKNOWN:
            return _call("void", state, by_key=True)
        case PaymentStatus.CAPTURED:
            return Decision(state=None, rejected=f"cannot void {cmd.order_id}: it is captured (refund it)")
    return Decision(state=None)  # declined or refunded: nothing is held


def _for_an_unknown_authorization(cmd: VoidPayment) -> bool:
    """Whether ``cmd`` is the void this flow sends itself for an authorization the gateway gave no answer to."""
    return cmd.authorization_id is None and cmd.reason == GATEWAY_UNAVAILABLE


def _plan_refund(state: PaymentState | None, cmd: RefundPayment) -> GatewayCall | Decision[PaymentState]:
    if state is not None and state.refunded is not None:
        return _again(state, state.refunded.cause)
    if state is None or state.authorization is None:
        return _tombstone(state, cmd, "refunded")
    if state.status in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED):
        return _call("refund", state)
    return Decision(state=None)  # declined, voided, or unknown (its own void settles it): nothing to refund


def _authorized(cmd: AuthorizePayment, result: GatewayResult, cause: Cause) -> PaymentState:
    if result.outcome == Outcome.APPROVED:
        auth = Authorization(cause=cause, outcome=Outcome.APPROVED, authorization_id=result.authorization_id)
    elif result.outcome == Outcome.DECLINED:
        auth = Authorization(cause=cause, outcome=Outcome.DECLINED, reason=result.reason)
    else:
        auth = Authorization(cause=cause, outcome=Outcome.UNAVAILABLE, reason=GATEWAY_UNAVAILABLE)
    return _with_request(PaymentState(order_id=cmd.order_id), cmd).model_copy(update={"authorization": auth})


def _with_request(state: PaymentState, cmd: AuthorizePayment) -> PaymentState:
    return state.model_copy(
        update={"amount_cents": cmd.amount_cents, "currency": cmd.currency, "payment_token": cmd.payment_token}
    )


def _tombstone(state: PaymentState | None, cmd: VoidPayment | RefundPayment, field: str) -> Decision[PaymentState]:
    """Money given back before it was taken: remember it so a late authorization is refused; nothing to emit."""
    base = state if state is not None else PaymentState(order_id=cmd.order_id)
    return Decision(state=base.model_copy(update={field: Settlement(cause=Cause.of(cmd))}))


def _call(operation: Operation, state: PaymentState, *, by_key: bool = False) -> GatewayCall:
    return GatewayCall(
        operation=operation,
        idempotency_key=state.order_id,
        amount_cents=state.amount_cents,
        currency=state.currency or "",
        payment_token=state.payment_token if by_key else None,
        authorization_id=None if by_key else state.authorization_id,
    )


def _emitting(state: PaymentState, cause: Cause) -> Decision[PaymentState]:
    return Decision(state=state, messages=effects_of(state, cause.event_id))


def _again(state: PaymentState, cause: Cause) -> Decision[PaymentState]:
    return Decision(state=None, messages=effects_of(state, cause.event_id))
