"""What the API's producer tells of a command by the broker's answer (api/commands.py ``_settle``)."""

import asyncio
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError

from api.commands import _settle
from api.errors import OutcomeUnknown, Unavailable


async def settled(err: KafkaError | None) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _settle(future, err)
    return future


async def test_a_command_not_confirmed_in_time_may_have_been_written_and_is_not_called_refused():
    future = await settled(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"))
    with pytest.raises(OutcomeUnknown, match="may have been written all the same") as raised:
        future.result()
    assert "refused" not in raised.value.message and raised.value.status == 503


async def test_a_command_the_broker_refused_is_told_as_refused():
    future = await settled(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorized"))
    with pytest.raises(Unavailable, match="the broker refused the command") as raised:
        future.result()
    assert not isinstance(raised.value, OutcomeUnknown)
    assert (await settled(None)).result() is None


def _until(condition: Callable[[], bool], deadline: float) -> bool:
    import time

    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


async def test_a_broker_that_does_not_answer_makes_commands_refused_at_once_with_nothing_sent():
    """A stopped or killed broker: the API's producer learns it from its metadata probe, and a command is then a
    503 ``unavailable`` (nothing sent, a retry is safe) at once, not a 5 s wait ending in "outcome unknown"."""
    import socket
    import time

    from api.commands import PROBE_EVERY_S, PROBE_FAILURES, PROBE_TIMEOUT_S, KafkaCommands
    from schemas.messages import PlaceOrder
    from streamcart.settings import Settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    commands = KafkaCommands(Settings(kafka_port=port), codec=None)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + PROBE_FAILURES * (PROBE_EVERY_S + PROBE_TIMEOUT_S) + 5
        assert await asyncio.to_thread(_until, lambda: not commands.reachable(), deadline)
        began = time.monotonic()
        with pytest.raises(Unavailable, match="nothing was sent") as raised:
            await commands.send(PlaceOrder.model_construct(order_id="o-1"))
        assert not isinstance(raised.value, OutcomeUnknown)
        assert time.monotonic() - began < 0.5
        assert len(commands.producer) == 0  # nothing queued for the broker
    finally:
        commands.close()
