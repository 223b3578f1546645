"""asyncio clients: :class:`AIOProducer` and :class:`AIOConsumer`.

They wrap :class:`spate.Producer` and :class:`spate.Consumer` without blocking the running
event loop: a send's result arrives through the producer's network thread
(``loop.call_soon_threadsafe``), and consumer calls run in the loop's default executor.
"""

import asyncio
import functools
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from spate._native import Consumer, DeliveryFuture, Producer, Record, RecordMetadata
from spate._types import TopicPartition

_T = TypeVar("_T")

Payload = Union[bytes, bytearray, memoryview, str, None]
Headers = Union[Sequence[Tuple[str, Payload]], Mapping[str, Payload], None]


class AIOProducer:
    """A producer for asyncio code: ``await producer.send(...)`` gives the record's
    :class:`spate.RecordMetadata` once the broker has it, without blocking the loop.

    Takes the same arguments as :class:`spate.Producer`. Use it as an async context manager,
    or call :meth:`close`.
    """

    def __init__(self, bootstrap_servers: Union[str, Sequence[str]], **config: Any) -> None:
        self._producer = Producer(bootstrap_servers, **config)

    async def send(
        self,
        topic: str,
        value: Payload = None,
        key: Payload = None,
        headers: Headers = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> RecordMetadata:
        """Sends a record and waits (asynchronously) until it is delivered; raises why not."""
        future = await self.send_nowait(topic, value, key, headers, partition, timestamp_ms)
        return await future

    async def send_nowait(
        self,
        topic: str,
        value: Payload = None,
        key: Payload = None,
        headers: Headers = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> "asyncio.Future[RecordMetadata]":
        """Queues a record and returns an asyncio future of its metadata, so that many can be
        in flight at once (``await asyncio.gather(*futures)``)."""
        loop = asyncio.get_running_loop()
        result: "asyncio.Future[RecordMetadata]" = loop.create_future()
        delivery = self._producer.send(
            topic, value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp_ms
        )

        def settle(done: DeliveryFuture) -> None:
            loop.call_soon_threadsafe(_settle, result, done)

        delivery.add_done_callback(settle)
        return result

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every queued record is delivered or failed."""
        await _in_executor(self._producer.flush, timeout)

    async def close(self, timeout: Optional[float] = None) -> None:
        """Flushes and stops the producer."""
        await _in_executor(self._producer.close, timeout)

    async def __aenter__(self) -> "AIOProducer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _settle(result: "asyncio.Future[RecordMetadata]", done: DeliveryFuture) -> None:
    if result.cancelled():
        return
    error = done.exception(timeout=0)
    if error is not None:
        result.set_exception(error)
    else:
        result.set_result(done.result(timeout=0))


class AIOConsumer:
    """A consumer for asyncio code: ``async for record in consumer``, ``await
    consumer.getmany()``, ``await consumer.commit()``. Each call runs in the loop's default
    executor, so the loop keeps running while it waits.

    Takes the same arguments as :class:`spate.Consumer`; rebalance callbacks given to
    :meth:`subscribe` run on the executor's thread.
    """

    def __init__(
        self,
        bootstrap_servers: Union[str, Sequence[str]],
        group_id: Optional[str] = None,
        topics: Union[str, Iterable[str], None] = None,
        **config: Any,
    ) -> None:
        self._consumer = Consumer(bootstrap_servers, group_id=group_id, topics=topics, **config)

    @property
    def consumer(self) -> Consumer:
        """The blocking consumer underneath, for calls that do not wait (``assignment``)."""
        return self._consumer

    async def subscribe(
        self,
        topics: Union[str, Iterable[str]],
        on_assign: Optional[Callable[[Consumer, List[TopicPartition]], object]] = None,
        on_revoke: Optional[Callable[[Consumer, List[TopicPartition]], object]] = None,
        on_lost: Optional[Callable[[Consumer, List[TopicPartition]], object]] = None,
    ) -> None:
        """As :meth:`spate.Consumer.subscribe`."""
        await _in_executor(self._consumer.subscribe, topics, on_assign, on_revoke, on_lost)

    async def getmany(self, timeout_ms: int = 0, max_records: Optional[int] = None) -> List[Record]:
        """Records, waiting up to ``timeout_ms`` for some (:meth:`spate.Consumer.poll`)."""
        return await _in_executor(self._consumer.poll, timeout_ms, max_records)

    async def getone(self) -> Record:
        """The next record, waiting as long as it takes."""
        while True:
            records = await _in_executor(self._consumer.poll, 500, 1)
            if records:
                return records[0]

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        while True:
            yield await self.getone()

    async def commit(
        self, offsets: Optional[Mapping[Tuple[str, int], int]] = None
    ) -> None:
        """Commits (the positions, or ``offsets``) and waits for the coordinator's answer."""
        await _in_executor(self._consumer.commit, offsets)

    async def committed(self, partitions: Iterable[Tuple[str, int]]) -> Dict[TopicPartition, int]:
        """As :meth:`spate.Consumer.committed`."""
        return await _in_executor(self._consumer.committed, list(partitions))

    async def seek(self, partition: Tuple[str, int], offset: int) -> None:
        """As :meth:`spate.Consumer.seek`."""
        await _in_executor(self._consumer.seek, partition, offset)

    async def close(self) -> None:
        """Commits (with auto commit), leaves the group and stops the consumer."""
        await _in_executor(self._consumer.close)

    async def __aenter__(self) -> "AIOConsumer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _in_executor(function: Callable[..., _T], *args: Any) -> _T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(function, *args))


__all__ = ["AIOConsumer", "AIOProducer"]
