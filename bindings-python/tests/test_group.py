"""Consumer groups through the spate package: sharing, commits, rebalance callbacks."""

import threading
import time

import pytest

import spate


def produce(servers, topic, count, partitions):
    with spate.Producer(servers) as producer:
        for i in range(count):
            producer.send(topic, str(i), partition=i % partitions)


def test_three_consumers_share_partitions_and_resume_from_commits(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=6)
    group = f"{topic_name}-group"
    settings = dict(group_id=group, topics=[topic_name], auto_offset_reset="earliest",
                    enable_auto_commit=False)
    consumers = [spate.Consumer(servers, **settings) for _ in range(3)]
    seen = {}
    try:
        # Each consumer polls on its own thread, as separate processes would.
        stop = threading.Event()

        def run(index, consumer):
            while not stop.is_set():
                for record in consumer.poll(timeout_ms=200):
                    seen.setdefault(index, []).append(record)
                if sum(len(records) for records in seen.values()) >= 600:
                    stop.set()

        threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(consumers)]
        for thread in threads:
            thread.start()
        # All three join before there is anything to read: a member that joined first would
        # otherwise read everything alone, and the others would read it again after the
        # rebalance (nothing is committed yet), which is at-least-once, not what this checks.
        deadline = time.time() + 60
        while time.time() < deadline:
            if sorted(len(c.assignment()) for c in consumers) == [2, 2, 2]:
                break
            time.sleep(0.1)
        produce(servers, topic_name, 600, 6)
        deadline = time.time() + 60
        while not stop.is_set() and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
        assignments = [set(c.assignment()) for c in consumers]
        # Every partition is read by exactly one member, two each.
        assert sorted(len(a) for a in assignments) == [2, 2, 2]
        assert set().union(*assignments) == {(topic_name, p) for p in range(6)}
        records = [r for rs in seen.values() for r in rs]
        assert sorted(int(r.value) for r in records) == list(range(600))
        for index, records in seen.items():
            assert {(r.topic, r.partition) for r in records} <= assignments[index]
        # Commit only the first 50 records of each partition.
        for consumer, assignment in zip(consumers, assignments):
            consumer.commit({partition: 50 for partition in assignment})
    finally:
        for consumer in consumers:
            consumer.close()
    with spate.Admin(servers) as client:
        offsets = client.list_group_offsets(group)
    assert {(o["partition"], o["committed"], o["lag"]) for o in offsets} == {
        (p, 50, 50) for p in range(6)
    }
    # A new member of the group resumes from the commits.
    with spate.Consumer(servers, **settings) as consumer:
        resumed = []
        deadline = time.time() + 30
        while len(resumed) < 300 and time.time() < deadline:
            resumed.extend(consumer.poll(timeout_ms=500))
    assert len(resumed) == 300
    assert min(r.offset for r in resumed) == 50


def test_rebalance_callbacks_may_use_the_consumer(servers, admin, topic_name):
    admin.create_topic(topic_name, num_partitions=2)
    produce(servers, topic_name, 10, 2)
    group = f"{topic_name}-group"
    events = []

    def on_assign(consumer, partitions):
        events.append(("assigned", sorted(partitions)))
        # Calls on the consumer inside its own callback work (and do not deadlock).
        for partition in partitions:
            consumer.seek(partition, 1)
        assert consumer.assignment()

    def on_revoke(consumer, partitions):
        events.append(("revoked", sorted(partitions)))
        consumer.commit()

    consumer = spate.Consumer(servers, group_id=group, enable_auto_commit=False,
                              auto_offset_reset="earliest")
    consumer.subscribe([topic_name], on_assign=on_assign, on_revoke=on_revoke)
    records = []
    deadline = time.time() + 30
    while len(records) < 8 and time.time() < deadline:
        records.extend(consumer.poll(timeout_ms=500))
    assert sorted(r.offset for r in records) == [1, 1, 2, 2, 3, 3, 4, 4]
    consumer.close()
    both = [(topic_name, 0), (topic_name, 1)]
    assert events == [("assigned", both), ("revoked", both)]
    with spate.Consumer(servers, group_id=group) as reader:
        assert reader.committed(both) == {both[0]: 5, both[1]: 5}


def test_an_exception_in_a_callback_is_raised_by_poll(servers, topic_name):
    produce(servers, topic_name, 1, 1)

    def on_assign(consumer, partitions):
        raise ValueError("from the callback")

    with spate.Consumer(servers, group_id=f"{topic_name}-g") as consumer:
        consumer.subscribe(topic_name, on_assign=on_assign)
        with pytest.raises(ValueError, match="from the callback"):
            deadline = time.time() + 30
            while time.time() < deadline:
                consumer.poll(timeout_ms=500)


def test_close_inside_a_callback_is_refused(servers, topic_name):
    produce(servers, topic_name, 1, 1)
    refused = []

    def on_assign(consumer, partitions):
        try:
            consumer.close()
        except spate.StateError as error:
            refused.append(str(error))

    with spate.Consumer(servers, group_id=f"{topic_name}-g") as consumer:
        consumer.subscribe([topic_name], on_assign=on_assign)
        deadline = time.time() + 30
        while not refused and time.time() < deadline:
            consumer.poll(timeout_ms=200)
    assert refused and "rebalance callback" in refused[0]


def test_auto_commit_on_close_and_async_commit(servers, topic_name):
    produce(servers, topic_name, 5, 1)
    group = f"{topic_name}-g"
    with spate.Consumer(servers, group_id=group, topics=[topic_name],
                        auto_offset_reset="earliest") as consumer:
        got = []
        deadline = time.time() + 30
        while len(got) < 5 and time.time() < deadline:
            got.extend(consumer.poll(timeout_ms=500))
    # Closing committed the positions (enable.auto.commit is on by default).
    with spate.Consumer(servers, group_id=group) as reader:
        partition = (topic_name, 0)
        assert reader.committed([partition]) == {partition: 5}
        reader.assign([partition])
        reader.commit({partition: 2}, asynchronous=True)
        reader.commit({partition: 3})  # Sent after the asynchronous one.
        assert reader.committed([partition]) == {partition: 3}


def test_callbacks_may_not_poll_or_resubscribe_but_may_read_state(servers, topic_name):
    produce(servers, topic_name, 3, 1)
    seen = []

    def on_assign(consumer, partitions):
        seen.append(consumer.closed)
        seen.append(consumer.subscription())
        for call in (lambda: consumer.poll(), lambda: consumer.subscribe([topic_name]),
                     lambda: consumer.assign(partitions), lambda: consumer.unsubscribe()):
            try:
                call()
            except spate.StateError as error:
                seen.append("rebalance callback" in str(error))

    with spate.Consumer(servers, group_id=f"{topic_name}-g") as consumer:
        consumer.subscribe([topic_name], on_assign=on_assign)
        deadline = time.time() + 30
        while not seen and time.time() < deadline:
            consumer.poll(timeout_ms=200)
    assert seen == [False, [topic_name], True, True, True, True]


def test_records_polled_when_a_callback_raises_are_not_lost(servers, topic_name):
    produce(servers, topic_name, 20, 1)
    raised = []

    def on_assign(consumer, partitions):
        if not raised:
            raised.append(True)
            raise RuntimeError("once")

    records = []
    with spate.Consumer(servers, group_id=f"{topic_name}-g", auto_offset_reset="earliest") as consumer:
        consumer.subscribe([topic_name], on_assign=on_assign)
        deadline = time.time() + 30
        while len(records) < 20 and time.time() < deadline:
            try:
                records.extend(consumer.poll(timeout_ms=500))
            except RuntimeError:
                pass
    assert raised
    assert [r.offset for r in records] == list(range(20))
