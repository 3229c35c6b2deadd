"""Webhook URLs come from customers: they must never reach inside our own network."""

import pytest

from streamcart.notify.delivery import DeliveryRefused, check_webhook_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/v1/authorizations/auth_x/refund",
        "http://localhost:8080/v1/orders",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8090/",
        "file:///etc/passwd",
        "ftp://example.com/x",
    ],
)
async def test_a_webhook_aimed_inside_the_network_or_not_http_is_refused(url):
    with pytest.raises(DeliveryRefused):
        await check_webhook_url(url, allow_private=False)


async def test_a_public_address_is_accepted_and_private_ones_only_when_allowed():
    await check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    await check_webhook_url("http://127.0.0.1:9999/hook", allow_private=True)
