"""What the API's producer tells of a command by the broker's answer (api/commands.py ``_settle``)."""

import asyncio

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
