"""Transactions through the spate package: a transactional producer's committed records reach
read_committed consumers and aborted ones never do; offsets sent to a transaction are the
group's committed offsets once it commits (consume-transform-produce); a second producer of
the transactional id fences the first."""

import pytest

import spate


def read_all(servers, topic, isolation_level):
    values = []
    with spate.Consumer(servers, isolation_level=isolation_level) as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek_to_beginning()
        while True:
            batch = consumer.poll(timeout_ms=1_500)
            if not batch:
                return values
            values.extend(record.value.decode() for record in batch)


def test_committed_records_are_read_and_aborted_ones_never(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=1)
    with spate.Producer(servers, transactional_id=f"{topic_name}-tx") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic_name, f"kept-{i}", partition=0)
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic_name, f"dropped-{i}", partition=0)
        producer.abort_transaction()
        with pytest.raises(spate.StateError):
            producer.send(topic_name, "outside a transaction", partition=0)
    assert read_all(servers, topic_name, "read_committed") == [f"kept-{i}" for i in range(5)]
    assert len(read_all(servers, topic_name, "read_uncommitted")) == 10


def test_offsets_sent_to_the_transaction_commit_with_it(servers, admin, topic_name):
    source, sink, group = topic_name, f"{topic_name}-out", f"{topic_name}-group"
    admin.create_topic(source, num_partitions=1)
    admin.create_topic(sink, num_partitions=1)
    with spate.Producer(servers) as plain:
        for i in range(20):
            plain.send(source, f"in-{i}", partition=0)
    with spate.Producer(servers, transactional_id=f"{topic_name}-tx") as producer, \
            spate.Consumer(servers, group_id=group, topics=[source],
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           isolation_level="read_committed") as consumer:
        producer.init_transactions()
        done = 0
        while done < 20:
            batch = consumer.poll(timeout_ms=10_000)
            assert batch, "records stopped arriving"
            producer.begin_transaction()
            for record in batch:
                producer.send(sink, b"out-" + record.value, partition=0)
            positions = {(record.topic, record.partition): record.offset + 1 for record in batch}
            producer.send_offsets_to_transaction(positions, consumer.group_metadata())
            producer.commit_transaction()
            done += len(batch)
        metadata = consumer.group_metadata()
        assert metadata.group_id == group and metadata.generation_id >= 1
        assert consumer.committed([(source, 0)]) == {(source, 0): 20}
    assert read_all(servers, sink, "read_committed") == [f"out-in-{i}" for i in range(20)]


def test_a_second_producer_of_the_id_fences_the_first(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=1)
    transactional_id = f"{topic_name}-tx"
    zombie = spate.Producer(servers, transactional_id=transactional_id)
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.send(topic_name, "zombie", partition=0)
    zombie.flush(timeout=30)
    with spate.Producer(servers, transactional_id=transactional_id) as successor:
        successor.init_transactions()
        successor.begin_transaction()
        successor.send(topic_name, "successor", partition=0)
        successor.commit_transaction()
    with pytest.raises(spate.SpateError):
        zombie.commit_transaction()
    zombie.close()
    assert read_all(servers, topic_name, "read_committed") == ["successor"]
