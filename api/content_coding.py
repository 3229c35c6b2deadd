"""Decoding a request body sent compressed (``Content-Encoding``), here rather than in aiohttp's HTTP parser.

aiohttp decodes a body while it arrives: a coding it has no decoder for (``br`` without Brotli), or a corrupt
body, is answered by its protocol layer, before any middleware, as plain text, or surfaces as an exception no
handler expects (a 500). The app turns that off (``auto_decompress=False``) and decodes
here, where every failure is an :class:`~api.errors.ApiError`. A request forwarded to the owner of its key carries
the body as the client sent it, with its ``Content-Encoding``, and is decoded there the same way.
"""

from __future__ import annotations

import zlib

from api.errors import ApiError, PayloadTooLarge, UnsupportedMediaType

#: zlib's window bits for each coding accepted (RFC 9110 §8.4.1: ``deflate`` is the zlib format).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = "gzip, deflate"


def decoded(raw: bytes, coding: str, limit: int) -> bytes:
    """``raw`` as sent with ``Content-Encoding: coding``, decoded: 415 for a coding not accepted, 400 for a body
    that does not decode, 413 past ``limit`` bytes once decoded (a few KiB of gzip can inflate to gigabytes)."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return raw
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(f"Content-Encoding {coding[:40]!r} is not supported (accepted: {ACCEPTED})",
                                   headers={"Accept-Encoding": ACCEPTED})
    decompressor = zlib.decompressobj(wbits)
    try:
        body = decompressor.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ApiError(f"the body is not valid {coding} data ({exc})") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes once decoded")
    if not decompressor.eof:
        raise ApiError(f"the {coding} body ends before its compressed data does")
    if decompressor.unused_data:  # a second gzip member, or bytes after the end: not read, so not accepted
        raise ApiError(f"the body has data after the end of its {coding} data")
    return body
