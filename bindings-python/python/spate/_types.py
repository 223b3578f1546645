"""Small value types shared by the clients."""

from typing import NamedTuple


class TopicPartition(NamedTuple):
    """A partition of a topic. Any ``(topic, partition)`` tuple is accepted where one is."""

    topic: str
    partition: int
