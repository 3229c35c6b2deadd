"""Deterministic identifiers: the same input always gives the same id.

A derived message's ``event_id`` is a function of what caused it, so a handler that runs twice on the same
input emits byte-identical ids and every downstream consumer can drop the second copy.
"""

from __future__ import annotations

import re
import uuid

#: What a SKU, an order id or a customer id may look like (in a URL, a body, a table key): plain, short, unambiguous.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def is_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None


_NAMESPACE = uuid.UUID("5d1b8a3e-4c0f-4b7e-9f61-2a8c0e6d9b10")


def derive_id(*parts: object) -> str:
    """A stable UUID (version 5) naming ``parts``, e.g. ``derive_id(order_event_id, "ReserveStock", sku)``."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(str(part) for part in parts)))


def new_id() -> str:
    """A fresh random id, for messages that originate outside the system (a request, a timer tick)."""
    return str(uuid.uuid4())
