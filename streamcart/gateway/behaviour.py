"""How a card token decides an authorization's outcome. Pure: the server applies it.

| token | outcome |
|---|---|
| ``tok_approve`` (or ``tok_visa``) | approved |
| ``tok_decline`` | declined, ``card_declined`` |
| ``tok_funds_<N>`` | approved up to N cents, above that declined ``insufficient_funds`` |
| ``tok_slow_<MS>`` | approved after MS milliseconds (to outlast a client's timeout) |
| ``tok_flaky_<N>`` | 503 for the first N attempts of an idempotency key, then approved |
| anything else | declined, ``invalid_token`` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Behaviour:
    approve: bool
    reason: str | None = None
    delay_ms: int = 0
    fail_first: int = 0


_PARAM = re.compile(r"^tok_(funds|slow|flaky)_(\d+)$")


def behaviour_of(token: str, amount_cents: int) -> Behaviour:
    if token in {"tok_approve", "tok_visa"}:
        return Behaviour(approve=True)
    if token == "tok_decline":
        return Behaviour(approve=False, reason="card_declined")
    match = _PARAM.match(token)
    if match is None:
        return Behaviour(approve=False, reason="invalid_token")
    kind, number = match.group(1), int(match.group(2))
    if kind == "funds":
        return Behaviour(approve=True) if amount_cents <= number else Behaviour(False, "insufficient_funds")
    if kind == "slow":
        return Behaviour(approve=True, delay_ms=number)
    return Behaviour(approve=True, fail_first=number)
