"""The saga's decisions as pure functions: no faust, Kafka or clock import (time comes in the message).

One module per flow, each with ``decide(state, message, ...) -> Decision``; compensation is just more messages.

- :mod:`~streamcart.domain.orders` (key order_id): the order state machine, the saga's memory
  (state in :mod:`~streamcart.domain.order_state`, emitted messages in :mod:`~streamcart.domain.order_effects`);
- :mod:`~streamcart.domain.catalog` and :mod:`~streamcart.domain.inventory` (key sku): products, stock,
  reservations;
- :mod:`~streamcart.domain.payments` (key order_id): ``plan`` the gateway call, ``apply_result`` its answer;
- :mod:`~streamcart.domain.shipping` (key order_id): shipments and their tracking ids;
- :mod:`~streamcart.domain.timeouts`: which ExpireOrder commands a timer tick emits;
- :mod:`~streamcart.domain.notifications`: which notifications follow which order event.

Every derived message is named ``derive_id(cause_event_id, "Kind", sku...)`` and timed at its cause
(:mod:`~streamcart.domain.causes`), and a message applied twice changes nothing and re-emits the same messages.
"""

from streamcart.domain.decision import Decision

__all__ = ["Decision"]
