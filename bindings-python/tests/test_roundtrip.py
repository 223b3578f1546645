"""Producing and consuming through the spate package against an embedded broker."""

import threading

import pytest

import spate


def test_round_trip_with_keys_headers_and_timestamps(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=3)
    with spate.Producer(servers, linger_ms=1) as producer:
        futures = [
            producer.send(
                topic_name,
                f"value-{i}",
                key=f"key-{i % 5}".encode(),
                headers=[("index", str(i).encode()), ("empty", None)],
                timestamp_ms=1_700_000_000_000 + i,
            )
            for i in range(50)
        ]
        producer.flush(timeout=30)
        metadata = [future.result(timeout=0) for future in futures]
    assert all(m.topic == topic_name for m in metadata)
    assert {m.timestamp_ms for m in metadata} == {1_700_000_000_000 + i for i in range(50)}
    # A key always lands on the same partition.
    by_key = {}
    for i, m in enumerate(metadata):
        by_key.setdefault(i % 5, set()).add(m.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())

    with spate.Consumer(servers, topics=[topic_name], auto_offset_reset="earliest") as consumer:
        assert sorted(consumer.assignment()) == [(topic_name, p) for p in range(3)]
        records = []
        while len(records) < 50:
            batch = consumer.poll(timeout_ms=10_000)
            assert batch, "records stopped arriving"
            records.extend(batch)
    assert sorted(r.value for r in records) == sorted(f"value-{i}".encode() for i in range(50))
    for record in records:
        i = int(record.value.decode().split("-")[1])
        assert record.key == f"key-{i % 5}".encode()
        assert record.headers == [("index", str(i).encode()), ("empty", None)]
        assert record.timestamp_ms == 1_700_000_000_000 + i
        assert (record.partition, record.offset) == (
            metadata[i].partition,
            metadata[i].offset,
        )
    # Offsets within a partition are in order.
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == sorted(offsets)


def test_values_may_be_str_bytearray_memoryview_or_none(servers, topic_name):
    with spate.Producer(servers) as producer:
        for value in ["text é", bytearray(b"array"), memoryview(b"view"), None, b""]:
            producer.send(topic_name, value, partition=0)
    with spate.Consumer(servers, topics=topic_name, auto_offset_reset="earliest",
                        consumer_timeout_ms=3000) as consumer:
        values = [record.value for record in consumer]
    assert values == ["text é".encode(), b"array", b"view", None, b""]


def test_on_delivery_runs_on_the_calling_thread_in_flush(servers, topic_name):
    reports = []
    with spate.Producer(servers) as producer:
        for i in range(10):
            producer.send(
                topic_name,
                b"x",
                partition=0,
                on_delivery=lambda error, metadata: reports.append(
                    (error, metadata, threading.get_ident())
                ),
            )
        producer.flush()
        assert len(producer) == 0
    assert len(reports) == 10
    assert all(error is None for error, _, _ in reports)
    assert [m.offset for _, m, _ in reports] == list(range(10))
    assert {thread for _, _, thread in reports} == {threading.get_ident()}


def test_add_done_callback_and_future_state(servers, topic_name):
    done = threading.Event()
    seen = []
    with spate.Producer(servers, linger_ms=50) as producer:
        future = producer.send(topic_name, b"v")

        def callback(finished):
            seen.append(finished.result(timeout=0).offset)
            done.set()

        future.add_done_callback(callback)
        assert done.wait(10)
        assert future.done()
        assert future.exception() is None
        later = []
        future.add_done_callback(lambda f: later.append(f))
        assert later == [future]
    assert seen == [0]


def test_keyed_records_land_where_kafka_clients_put_them(servers, admin, topic_name):
    # murmur2 of the key modulo the partition count, positive: the Java client's and
    # librdkafka's murmur2_random placement (values checked against the Java client).
    admin.create_topic(topic_name, num_partitions=6)
    with spate.Producer(servers) as producer:
        placed = {
            key: producer.send(topic_name, b"v", key=key).result(timeout=10).partition
            for key in [b"a", b"b", b"user-42", b"\x00\x01"]
        }
    import confluent_kafka

    reference = confluent_kafka.Producer(
        {"bootstrap.servers": servers, "partitioner": "murmur2_random"}
    )
    expected = {}
    for key in placed:
        reference.produce(
            topic_name,
            b"v",
            key=key,
            on_delivery=lambda error, message, key=key: expected.__setitem__(
                key, message.partition()
            ),
        )
    reference.flush(10)
    assert placed == expected


def test_many_threads_share_a_producer(servers, topic_name):
    with spate.Producer(servers) as producer:
        def send_many():
            for _ in range(200):
                producer.send(topic_name, b"x", partition=0)

        threads = [threading.Thread(target=send_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        producer.flush(timeout=30)
    with spate.Consumer(servers) as consumer:
        assert consumer.watermarks((topic_name, 0)) == (0, 800)


def test_seek_pause_resume_and_offsets_for_times(servers, topic_name):
    with spate.Producer(servers) as producer:
        for i in range(20):
            producer.send(topic_name, str(i), partition=0, timestamp_ms=1_000_000 + i * 10)
    partition = spate.TopicPartition(topic_name, 0)
    with spate.Consumer(servers, auto_offset_reset="earliest") as consumer:
        consumer.assign([partition])
        assert consumer.offsets_for_times({partition: 1_000_055}) == {partition: 6}
        assert consumer.offsets_for_times({partition: 9_999_999}) == {partition: None}
        consumer.seek(partition, 15)
        assert [r.offset for r in consumer.poll(timeout_ms=5000)] == [15, 16, 17, 18, 19]
        consumer.seek_to_beginning()
        first = consumer.poll(timeout_ms=5000, max_records=3)
        assert [r.offset for r in first] == [0, 1, 2]
        assert consumer.position(partition) == 3
        consumer.pause(partition)
        assert consumer.paused() == [partition]
        assert consumer.poll(timeout_ms=300) == []
        consumer.resume(partition)
        assert consumer.poll(timeout_ms=5000, max_records=1)[0].offset == 3
        consumer.seek_to_end(partition)
        assert consumer.poll(timeout_ms=300) == []
        assert consumer.position(partition) == 20


def test_iteration_ends_after_consumer_timeout_ms(servers, topic_name):
    with spate.Producer(servers) as producer:
        producer.send(topic_name, b"only", partition=0)
    with spate.Consumer(servers, topics=[topic_name], auto_offset_reset="earliest",
                        consumer_timeout_ms=500) as consumer:
        assert [record.value for record in consumer] == [b"only"]


def test_record_repr_and_metadata_repr(servers, topic_name):
    with spate.Producer(servers) as producer:
        metadata = producer.send(topic_name, b"hello", key=b"k").result(timeout=10)
    assert repr(metadata).startswith(f"RecordMetadata(topic=\"{topic_name}\"")
    with spate.Consumer(servers, topics=[topic_name], auto_offset_reset="earliest") as consumer:
        (record,) = consumer.poll(timeout_ms=5000)
    assert "value=\"hello\"" in repr(record)
    with pytest.raises(AttributeError):
        record.value = b"other"
