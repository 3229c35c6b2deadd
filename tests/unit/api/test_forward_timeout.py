"""How long a worker waits for the owner of a key it forwards a request to (api/routing.py ``forward_timeout_s``)."""

import pytest
from aiohttp.test_utils import make_mocked_request

from api.routing import FORWARD_TIMEOUT_S, READ_MARGIN_S, forward_timeout_s


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/v1/orders/o-1", READ_MARGIN_S),  # a plain read: not 40 s behind an owner that does not answer
    ("HEAD", "/v1/orders/o-1", READ_MARGIN_S),
    ("GET", "/v1/orders/o-1?wait=12.5", 12.5 + READ_MARGIN_S),  # a long-poll: its wait and the margin
    ("GET", "/v1/orders/o-1?wait=30", FORWARD_TIMEOUT_S),  # the longest long-poll still works
    ("GET", "/v1/orders/o-1?wait=nope", READ_MARGIN_S),  # refused by the owner at once
    ("GET", "/v1/orders/o-1?wait=-3", READ_MARGIN_S),
    ("GET", "/v1/orders/o-1?wait=nan", READ_MARGIN_S),
    ("GET", "/v1/orders/o-1?wait=1e9", READ_MARGIN_S),
    ("POST", "/v1/orders", FORWARD_TIMEOUT_S),  # a command may wait on the broker and on another worker
    ("POST", "/v1/orders/o-1/cancel", FORWARD_TIMEOUT_S),
])
def test_a_forwarded_read_waits_for_its_long_poll_and_a_margin_a_command_as_before(method, path, expected):
    assert forward_timeout_s(make_mocked_request(method, path)) == expected
