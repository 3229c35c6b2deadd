"""Request bodies sent compressed: decoded, or refused with the status that fits."""

import gzip
import zlib

import pytest

from api.content_coding import decoded
from api.errors import ApiError, PayloadTooLarge, UnsupportedMediaType

BODY = b'{"delta": 3, "reason": "delivery"}'


@pytest.mark.parametrize(
    ("raw", "coding"),
    [(BODY, ""), (BODY, "identity"), (gzip.compress(BODY), "gzip"), (gzip.compress(BODY), " X-GZIP "),
     (zlib.compress(BODY), "deflate")],
)
def test_a_body_in_an_accepted_coding_is_decoded(raw, coding):
    assert decoded(raw, coding, limit=1024) == BODY


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip"])
def test_a_coding_not_accepted_is_a_415_naming_those_that_are(coding):
    with pytest.raises(UnsupportedMediaType) as refused:
        decoded(BODY, coding, limit=1024)
    assert refused.value.headers == {"Accept-Encoding": "gzip, deflate"}


@pytest.mark.parametrize(
    ("raw", "coding"),
    [(BODY, "gzip"), (BODY, "deflate"), (gzip.compress(BODY)[:-12], "gzip"), (zlib.compress(BODY)[:-6], "deflate")],
    ids=["plain-as-gzip", "plain-as-deflate", "truncated-gzip", "truncated-deflate"],
)
def test_a_body_that_does_not_decode_is_a_400(raw, coding):
    with pytest.raises(ApiError) as refused:
        decoded(raw, coding, limit=1024)
    assert refused.value.status == 400


def test_a_body_past_the_limit_once_decoded_is_a_413_however_small_it_was_sent():
    bomb = gzip.compress(b" " * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(PayloadTooLarge):
        decoded(bomb, "gzip", limit=64 * 1024)


def test_a_body_of_exactly_the_limit_is_decoded():
    assert decoded(gzip.compress(b"x" * 100), "gzip", limit=100) == b"x" * 100


@pytest.mark.parametrize("trailer", [gzip.compress(b'{"b": 2}'), b"junk"], ids=["second-member", "trailing-bytes"])
def test_data_after_the_end_of_a_gzip_body_is_a_400_not_silently_dropped(trailer):
    with pytest.raises(ApiError, match="after the end") as refused:
        decoded(gzip.compress(b'{"a": 1}') + trailer, "gzip", 1024)
    assert refused.type is ApiError
