"""Spate for Python: a Kafka producer, consumer and admin client, and a broker to embed.

Spate is an event streaming platform that speaks Apache Kafka's protocol; these clients work
with any Kafka broker, and :class:`EmbeddedBroker` runs a real Spate broker inside this
process for tests and notebooks::

    import spate

    with spate.EmbeddedBroker() as broker:
        with spate.Producer(broker.bootstrap_servers) as producer:
            producer.send("events", b"hello", key=b"user-1").result(timeout=10)
        with spate.Consumer(broker.bootstrap_servers, group_id="readers", topics=["events"],
                            auto_offset_reset="earliest") as consumer:
            for record in consumer.poll(timeout_ms=10_000):
                print(record.key, record.value)

:mod:`spate.aio` has asyncio versions of the producer and consumer.
"""

import atexit

from spate._errors import (
    BrokerError,
    ConfigError,
    ConnectionError,
    KafkaError,
    MessageTooLarge,
    NotEnoughReplicas,
    ProtocolError,
    SpateError,
    StateError,
    TimeoutError,
    TopicAlreadyExists,
    TopicNotFound,
)
from spate._native import (
    Admin,
    Consumer,
    ConsumerGroupMetadata,
    DeliveryFuture,
    EmbeddedBroker,
    Producer,
    Record,
    RecordMetadata,
    __version__,
    dump_partition_text,
    inspect_partition,
    stop_embedded_brokers,
)
from spate._types import TopicPartition

# Brokers a script never stopped still sync their data and remove their temporary
# directories when the interpreter exits.
atexit.register(stop_embedded_brokers)

__all__ = [
    "Admin",
    "BrokerError",
    "ConfigError",
    "ConnectionError",
    "Consumer",
    "ConsumerGroupMetadata",
    "DeliveryFuture",
    "EmbeddedBroker",
    "KafkaError",
    "MessageTooLarge",
    "NotEnoughReplicas",
    "Producer",
    "ProtocolError",
    "Record",
    "RecordMetadata",
    "SpateError",
    "StateError",
    "TimeoutError",
    "TopicAlreadyExists",
    "TopicNotFound",
    "TopicPartition",
    "__version__",
    "dump_partition_text",
    "inspect_partition",
]
