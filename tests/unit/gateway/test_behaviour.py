import pytest

from streamcart.gateway.behaviour import behaviour_of


@pytest.mark.parametrize(
    ("token", "amount", "approve", "reason"),
    [
        ("tok_approve", 100, True, None),
        ("tok_decline", 100, False, "card_declined"),
        ("tok_funds_500", 500, True, None),
        ("tok_funds_500", 501, False, "insufficient_funds"),
        ("tok_nonsense", 1, False, "invalid_token"),
    ],
)
def test_the_token_decides_the_outcome(token, amount, approve, reason):
    outcome = behaviour_of(token, amount)
    assert (outcome.approve, outcome.reason) == (approve, reason)


def test_slow_and_flaky_tokens_carry_their_parameters():
    assert behaviour_of("tok_slow_2500", 1).delay_ms == 2500
    assert behaviour_of("tok_flaky_3", 1).fail_first == 3
