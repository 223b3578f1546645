"""The spate package and confluent-kafka (librdkafka) against the same broker, both ways."""

import time

import confluent_kafka

import spate


def test_spate_producer_to_confluent_consumer(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=3)
    with spate.Producer(servers, compression_type="zstd") as producer:
        for i in range(30):
            producer.send(topic_name, f"v{i}", key=f"k{i}", headers=[("n", str(i).encode())])
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": servers,
        "group.id": f"{topic_name}-confluent",
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic_name])
    messages = []
    deadline = time.time() + 60
    while len(messages) < 30 and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            messages.append(message)
    consumer.close()
    assert len(messages) == 30
    for message in messages:
        i = int(message.value()[1:])
        assert message.key() == f"k{i}".encode()
        assert message.headers() == [("n", str(i).encode())]


def test_confluent_producer_to_spate_group_consumer(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=2)
    producer = confluent_kafka.Producer({"bootstrap.servers": servers, "linger.ms": 5})
    for i in range(20):
        producer.produce(topic_name, value=f"v{i}".encode(), key=f"k{i}".encode(),
                         headers=[("n", str(i).encode())], partition=i % 2)
    assert producer.flush(30) == 0
    group = f"{topic_name}-spate"
    with spate.Consumer(servers, group_id=group, topics=[topic_name],
                        auto_offset_reset="earliest") as consumer:
        records = []
        deadline = time.time() + 60
        while len(records) < 20 and time.time() < deadline:
            records.extend(consumer.poll(timeout_ms=500))
        consumer.commit()
    assert sorted(int(r.value[1:]) for r in records) == list(range(20))
    assert all(r.headers == [("n", r.value[1:])] for r in records)
    # Offsets committed by spate are what confluent-kafka reads for the group.
    reader = confluent_kafka.Consumer({"bootstrap.servers": servers, "group.id": group})
    committed = reader.committed(
        [confluent_kafka.TopicPartition(topic_name, p) for p in range(2)], timeout=10
    )
    reader.close()
    assert [tp.offset for tp in committed] == [10, 10]
