"""spate.aio: the asyncio producer and consumer."""

import asyncio

import pytest

import spate
from spate.aio import AIOConsumer, AIOProducer


def test_produce_and_consume_without_blocking_the_loop(servers, topic_name):
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        ticking = asyncio.create_task(ticker())
        async with AIOProducer(servers, linger_ms=20) as producer:
            first = await producer.send(topic_name, b"first", key=b"k")
            assert (first.topic, first.offset) == (topic_name, 0)
            pending = [await producer.send_nowait(topic_name, str(i)) for i in range(100)]
            delivered = await asyncio.gather(*pending)
            assert [m.offset for m in delivered] == list(range(1, 101))
        async with AIOConsumer(servers, group_id=f"{topic_name}-g", topics=[topic_name],
                               auto_offset_reset="earliest", enable_auto_commit=False) as consumer:
            values = []
            async for record in consumer:
                values.append(record.value)
                if len(values) == 101:
                    break
            await consumer.commit()
            partition = spate.TopicPartition(topic_name, 0)
            assert await consumer.committed([partition]) == {partition: 101}
            await consumer.seek(partition, 100)
            batch = await consumer.getmany(timeout_ms=5000)
            assert [r.value for r in batch] == [b"99"]
        stop.set()
        await ticking
        return values, ticks

    values, ticks = asyncio.run(main())
    assert values == [b"first"] + [str(i).encode() for i in range(100)]
    assert ticks > 5, "the event loop kept running while the clients waited"


def test_a_failed_send_raises_in_the_awaiting_task(servers, topic_name):
    async def main():
        async with AIOProducer(servers, max_request_size=1000) as producer:
            with pytest.raises(spate.MessageTooLarge):
                await producer.send(topic_name, b"x" * 5000)

    asyncio.run(main())
