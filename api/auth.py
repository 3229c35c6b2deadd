"""Bearer JWT authentication: HS256 only, ``exp`` required, small leeway; roles ``customer`` and ``admin``."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from api.errors import Forbidden, Unauthorized
from streamcart.ids import IDENTIFIER_PATTERN, is_identifier

ALGORITHM = "HS256"
LEEWAY_S = 10
#: The roles the API knows: a token granting neither is a credential minted for something else with the same secret.
ROLES = frozenset({"customer", "admin"})
#: The last ``exp`` taken (9999-12-31T23:59:59Z): a later one is no date the token could mean.
LATEST_EXP = 253_402_300_799


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject (a customer id) and roles."""

    subject: str
    roles: frozenset[str]
    #: When the token stops being accepted (epoch seconds, its ``exp`` plus the leeway): what a live stream opened
    #: with it runs until.
    expires_at: float = float("inf")

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def may_see_customer(self, customer_id: str) -> bool:
        return self.is_admin or self.subject == customer_id


def issue_token(secret: str, subject: str, roles: list[str], ttl_s: int = 3600, now: float | None = None) -> str:
    """A signed token for local use (``streamcart token``) and tests."""
    issued = int(now if now is not None else time.time())
    claims = {"sub": subject, "roles": roles, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


#: Verified tokens: (header, secret) -> (principal, expiry). Verifying a signature costs more than answering a
#: read from a table; a token is checked once and then trusted until its ``exp`` (plus the leeway).
_VERIFIED: OrderedDict[tuple[str, str], tuple[Principal, float]] = OrderedDict()
_VERIFIED_MAX = 10_000


def credential(authorization: str) -> str:
    """The token of an ``Authorization`` header however it is written (``bearer``, spaces around it), so that one
    token is one entry wherever tokens are counted or remembered (the rate limit, the verified tokens); a header
    that is no bearer token, as it is."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return f"\0{authorization}"  # never the same as a token: a bare token is no bearer header, and is refused


def authenticate(authorization: str | None, secret: str) -> Principal:
    """The principal of an ``Authorization`` header, or :class:`Unauthorized` with the reason."""
    key = (credential(authorization or ""), secret)
    if authorization:
        cached = _VERIFIED.get(key)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
    principal, expires = _verify(authorization, secret)
    _VERIFIED[key] = (principal, expires)
    while len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
    return principal


def _verify(authorization: str | None, secret: str) -> tuple[Principal, float]:
    if not authorization:
        raise Unauthorized("missing Authorization header", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    try:
        # The algorithm list is pinned: a token saying alg=none or RS256 is refused, not trusted.
        claims = jwt.decode(
            token.strip(), secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired", headers={"WWW-Authenticate": "Bearer"}) from exc
    except (jwt.PyJWTError, UnicodeError) as exc:  # UnicodeError: header bytes that are not UTF-8 are no JWT
        raise Unauthorized(f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from exc
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("invalid token: roles must be a list of strings")
    if not ROLES & set(roles):
        raise Forbidden("the token grants neither the customer nor the admin role")
    subject = claims["sub"]
    if not isinstance(subject, str) or not is_identifier(subject):
        # It names the customer in keys, messages and warehouse rows: an identifier, as a customer id in a URL.
        raise Unauthorized(f"invalid token: sub must match {IDENTIFIER_PATTERN}",
                           headers={"WWW-Authenticate": "Bearer"})
    exp = claims["exp"]
    # PyJWT takes any exp int() reads ("1796…", 1e308); one past what a float holds made a 500 here.
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 <= exp <= LATEST_EXP:
        raise Unauthorized(f"invalid token: exp must be a number of seconds up to {LATEST_EXP} (9999-12-31)",
                           headers={"WWW-Authenticate": "Bearer"})
    expires_at = float(exp) + LEEWAY_S
    return Principal(subject=subject, roles=frozenset(roles), expires_at=expires_at), expires_at
