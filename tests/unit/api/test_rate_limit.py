"""Token buckets: every credential has one, whatever bytes it was sent as."""

from api.middleware import TokenBuckets


def test_a_token_of_bytes_that_are_not_utf_8_is_limited_like_any_other():
    buckets = TokenBuckets(rate=1.0, burst=1)
    token = "Bearer \udcff\udcfe"  # how aiohttp hands over header bytes that are not UTF-8
    assert buckets.take(token, now=0.0) == 0
    assert buckets.take(token, now=0.0) == 1.0
