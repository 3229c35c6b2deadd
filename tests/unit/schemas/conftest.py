"""Fixtures for the schemas tests: an in-memory registry, a prepared codec, and a sample of any message type.

Samples are derived from each type's fields (name and annotation), so a new message type is covered by every
parametrised test without anyone writing a factory for it.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.messages import CancelReason, Record, ShipmentStatus
from schemas.registry import InMemoryRegistry

# Strings whose field has a constrained or well-known form; every other string is "<field>-<n>".
_STRINGS = {
    "currency": "EUR",
    "reason": CancelReason.OUT_OF_STOCK,
    "status": ShipmentStatus.DISPATCHED,
    "channel": "webhook",
    "template": "order_confirmed",
    "webhook_url": "https://shop.example/hooks/orders",
}
# Event times in epoch milliseconds: big enough to need more than 32 bits.
_TIMES = {"occurred_at", "deadline", "window_start", "window_end"}
_NOW_MS = 1_764_000_000_000

Make = Callable[..., Any]


def make_sample(
    record_type: type[Record], n: int = 1, *, with_optionals: bool = True, **overrides: Any
) -> Any:
    """An instance of ``record_type`` with sensible values; optional fields set or ``None``."""
    values = {
        name: _value(name, info.annotation, n, with_optionals)
        for name, info in record_type.model_fields.items()
        if name not in overrides
    }
    return record_type(**values, **overrides)


def _value(name: str, annotation: Any, n: int, with_optionals: bool) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:  # a constrained str (``Plain | None``)
        annotation = typing.get_args(annotation)[0]
    if annotation is str:
        return _STRINGS.get(name, f"{name}-{n}")
    if annotation is bool:
        return False  # not the usual default, so a lost value shows
    if annotation is int:
        return _NOW_MS + n if name in _TIMES else n + 2
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (present,) = (arg for arg in args if arg is not type(None))
        return _value(name, present, n, with_optionals) if with_optionals else None
    if origin is tuple and isinstance(args[0], type) and issubclass(args[0], Record):
        return tuple(make_sample(args[0], i, with_optionals=with_optionals) for i in range(1, 4))
    if origin is tuple:
        return tuple(_value(name, args[0], i, with_optionals) for i in range(1, 4))
    if origin is dict:
        return {CancelReason.TIMEOUT: 2, CancelReason.PAYMENT_DECLINED: 1}
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return make_sample(annotation, n, with_optionals=with_optionals)
    raise TypeError(f"no sample value for {name}: {annotation!r}; teach conftest.make_sample")


@pytest.fixture
def make() -> Make:
    return make_sample


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def codec(registry: InMemoryRegistry) -> Codec:
    codec = Codec(registry)
    codec.prepare()
    return codec
