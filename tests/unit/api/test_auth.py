import time

import jwt
import pytest

from api.auth import _VERIFIED, authenticate, credential, issue_token
from api.errors import Forbidden, Unauthorized

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def test_a_valid_token_names_its_subject_and_roles():
    principal = authenticate(f"Bearer {issue_token(SECRET, 'c-1', ['customer'])}", SECRET)
    assert principal.subject == "c-1"
    assert principal.roles == frozenset({"customer"})
    assert not principal.is_admin


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer " + issue_token("another-secret-0123456789abcdef0123", "c-1", ["admin"]),
        "Bearer " + issue_token(SECRET, "c-1", ["admin"], ttl_s=-60),
        "Bearer " + jwt.encode({"sub": "c-1", "roles": ["admin"], "exp": 9999999999}, None, algorithm="none"),
        "Bearer " + jwt.encode({"sub": "c-1", "roles": ["admin"]}, SECRET, algorithm="HS256"),
        "Bearer \udcff\udcfe",  # how aiohttp hands over header bytes that are not UTF-8
    ],
    ids=["missing", "empty", "basic", "no-token", "malformed", "wrong-signature", "expired", "alg-none", "no-exp",
         "not-utf-8"],
)
def test_a_bad_credential_is_refused(header):
    with pytest.raises(Unauthorized):
        authenticate(header, SECRET)


def test_a_customer_sees_only_their_own_orders_and_an_admin_sees_all():
    customer = authenticate(f"Bearer {issue_token(SECRET, 'c-1', ['customer'])}", SECRET)
    admin = authenticate(f"Bearer {issue_token(SECRET, 'ops', ['admin'])}", SECRET)
    assert customer.may_see_customer("c-1")
    assert not customer.may_see_customer("c-2")
    assert admin.may_see_customer("c-2")


def test_a_verified_token_is_trusted_only_until_it_expires(monkeypatch):
    import api.auth as auth

    now = time.time()
    token = issue_token(SECRET, 'c-cache', ['customer'], ttl_s=60, now=now)
    header = f"Bearer {token}"
    principal = authenticate(header, SECRET)
    assert principal.subject == "c-cache"
    assert auth._VERIFIED[(token, SECRET)][1] == principal.expires_at == int(now) + 60 + auth.LEEWAY_S

    def verify_again(authorization, secret):
        raise Unauthorized("token expired")

    monkeypatch.setattr(auth, "_verify", verify_again)
    assert authenticate(header, SECRET).subject == "c-cache"  # still within exp: no second verification
    monkeypatch.setattr(auth.time, "time", lambda: now + 60 + auth.LEEWAY_S + 1)
    with pytest.raises(Unauthorized, match="expired"):
        authenticate(header, SECRET)  # past exp: verified again, and refused


def test_a_token_verified_under_one_secret_is_not_trusted_under_another():
    token = issue_token(SECRET, "c-cache", ["customer"])
    authenticate(f"Bearer {token}", SECRET)
    with pytest.raises(Unauthorized):
        authenticate(f"Bearer {token}", "another-secret-0123456789abcdef0123")


def test_a_token_is_one_credential_however_its_header_is_written():
    token = issue_token(SECRET, "c-spelled", ["customer"])
    assert {credential(f"Bearer {token}"), credential(f"bearer   {token} "), credential(f"BEARER {token}")} == {token}
    assert credential(token) != token and credential("Basic abc") != "Basic abc"  # no bearer header: never a token
    before = len(_VERIFIED)
    for header in (f"Bearer {token}", f"bearer   {token}", f"BEARER {token}  "):
        assert authenticate(header, SECRET).subject == "c-spelled"
    assert len(_VERIFIED) == before + 1
    with pytest.raises(Unauthorized):  # the bare token is no header of the scheme, even once the token is known
        authenticate(token, SECRET)


@pytest.mark.parametrize("subject", ["c\x00-1", "", "a" * 65, "c/1", "c 1", 42],
                         ids=["nul", "empty", "too-long", "slash", "space", "not-a-string"])
def test_a_subject_that_could_not_name_a_customer_is_refused(subject):
    """It names the customer in keys, messages and warehouse rows: a NUL in it stopped the orders sink for good
    (PostgreSQL refuses the row)."""
    token = jwt.encode({"sub": subject, "roles": ["customer"], "exp": int(time.time()) + 60}, SECRET,
                       algorithm="HS256")
    with pytest.raises(Unauthorized, match=r"(?i)sub"):
        authenticate(f"Bearer {token}", SECRET)


@pytest.mark.parametrize("exp", [10**400, 1e300, 253_402_300_800, "9999999999"],
                         ids=["past-a-float", "huge-float", "after-9999", "a-string"])
def test_an_expiry_that_names_no_date_is_refused(exp):
    """PyJWT takes any ``exp`` that int() reads: one past what a float holds was a 500, 1e300 a token for ever."""
    token = jwt.encode({"sub": "c-1", "roles": ["customer"], "exp": exp}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="exp"):
        authenticate(f"Bearer {token}", SECRET)


@pytest.mark.parametrize("roles", [[], ["reporting"], ["Admin", "CUSTOMER"]], ids=["none", "another", "other-case"])
def test_a_token_granting_neither_role_is_forbidden(roles):
    """A token minted with the same secret for something else is no customer's credential."""
    token = issue_token(SECRET, "c-1", roles)
    with pytest.raises(Forbidden, match="neither the customer nor the admin role"):
        authenticate(f"Bearer {token}", SECRET)
    token = jwt.encode({"sub": "c-1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")  # no roles claim
    with pytest.raises(Forbidden):
        authenticate(f"Bearer {token}", SECRET)
