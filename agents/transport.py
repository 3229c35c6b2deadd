"""faust's Kafka transport with one fix: a partition that has no committed offset is rewound too.

After a rebalance or a table recovery faust drops the records it had fetched but not yet processed and calls
``perform_seek`` to go back to the committed offsets. aiokafka's ``seek_to_committed`` only seeks partitions
whose committed offset is a positive number (``if offset and offset > 0``): a partition with nothing committed
yet keeps its fetch position, *past* the dropped records, and those records are never processed. Seen on the
real stack: a worker SIGKILLed a few seconds after start skipped 230 order commands on a fresh partition.

Here such a partition goes back to where a group with no commit starts (``consumer_auto_offset_reset``,
``earliest``): at-least-once, and the duplicate rule absorbs whatever is processed again. Changelog partitions
are left alone: faust never commits them and positions them itself during recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed: Mapping[Any, int] = await self.call_thread(self._seek_to_committed_or_start)
        return committed

    async def _seek_to_committed_or_start(self) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[Any, int] = await consumer.seek_to_committed()
        acked = self.app.topics.acks_enabled_for
        never_committed = [TopicPartition(tp.topic, tp.partition) for tp, offset in committed.items()
                           if not offset and acked(tp.topic)]
        if never_committed:
            # Look the start offsets up and seek to them, rather than ``seek_to_beginning``: that leaves the
            # position unset until a reset completes, and faust's livelock check crashes the worker on an unset
            # position (AssertionError in ``TopicPartitionState.position``).
            starts = await consumer.beginning_offsets(never_committed)
            log.info("rewinding %d partition(s) with no committed offset to their start", len(starts))
            for tp, offset in starts.items():
                consumer.seek(tp, offset)
        return committed


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
