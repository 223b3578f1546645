"""Uses every public class of the package with types, for `mypy --strict` in the test suite
(it is also run, so that what it shows works)."""

import asyncio
from typing import Dict, List, Optional

import spate
from spate.aio import AIOConsumer, AIOProducer


def on_delivery(error: Optional[spate.SpateError], metadata: Optional[spate.RecordMetadata]) -> None:
    if error is not None:
        print("not delivered:", error)


def on_assign(consumer: spate.Consumer, partitions: List[spate.TopicPartition]) -> None:
    for partition in partitions:
        consumer.seek(partition, 0)


def main() -> None:
    with spate.EmbeddedBroker(num_partitions=2) as broker:
        servers: str = broker.bootstrap_servers
        with spate.Admin(servers) as admin:
            admin.create_topic("typed", num_partitions=2, config={"retention.ms": 60_000})
            topics: List[str] = admin.list_topics()
            assert "typed" in topics
        with spate.Producer(servers, linger_ms=1) as producer:
            future: spate.DeliveryFuture = producer.send("typed", b"v", key="k", on_delivery=on_delivery)
            metadata: spate.RecordMetadata = future.result(timeout=10)
            producer.flush(timeout=10)
        partition = spate.TopicPartition(metadata.topic, metadata.partition)
        with spate.Consumer(servers, group_id="typed-readers", enable_auto_commit=False) as consumer:
            consumer.subscribe(["typed"], on_assign=on_assign)
            records: List[spate.Record] = []
            while not records:
                records = consumer.poll(timeout_ms=1000)
            value: Optional[bytes] = records[0].value
            assert value == b"v"
            consumer.commit({partition: metadata.offset + 1})
            committed: Dict[spate.TopicPartition, int] = consumer.committed([partition])
            assert committed[partition] == metadata.offset + 1

        async def run_async() -> None:
            async with AIOProducer(servers) as aio_producer:
                sent = await aio_producer.send("typed", b"async", partition=0)
            async with AIOConsumer(servers, topics=["typed"], auto_offset_reset="earliest") as aio_consumer:
                batch = await aio_consumer.getmany(timeout_ms=5000)
                assert batch and sent.partition == 0

        asyncio.run(run_async())
        try:
            spate.Producer(servers, no_such_setting=1)
        except spate.ConfigError as error:
            assert error.setting == "no.such.setting"


if __name__ == "__main__":
    main()
    print("ok")
