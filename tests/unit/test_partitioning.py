"""Keys land on the partitions Kafka's default partitioner (murmur2) gives them, with the hashes remembered."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from streamcart.partitioning import CachingPartitioner, partition_for

RNG = random.Random(7)
KEYS = [f"order-{RNG.getrandbits(64):x}" for _ in range(500)] + ["", "sku-1", "ü-é"]


def test_the_caching_partitioner_agrees_with_aiokafkas_for_every_key_and_partition_count() -> None:
    ours, theirs = CachingPartitioner(), DefaultPartitioner()
    for partitions in (1, 3, 8, 12):
        all_partitions = list(range(partitions))
        for key in KEYS + KEYS:  # the second time from the remembered hashes
            expected = theirs(key.encode(), all_partitions, all_partitions)
            assert ours(key.encode(), all_partitions, all_partitions) == expected
            assert ours(bytearray(key.encode()), all_partitions, all_partitions) == expected
            assert partition_for(key, partitions) == expected


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    partitioner = CachingPartitioner()
    assert {partitioner(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert partitioner(None, [0, 1, 2, 3], []) in {0, 1, 2, 3}
