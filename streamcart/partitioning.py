"""Which partition a key lands on: murmur2 of its UTF-8 bytes, as faust/aiokafka and the Java client compute it."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key`` in a topic of ``partitions`` partitions (Kafka's default partitioner)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions
