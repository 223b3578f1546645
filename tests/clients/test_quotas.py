"""Client quotas seen by real clients: confluent-kafka (librdkafka) and kafka-python over a
produce quota and over a fetch quota reach the quota's rate within 10% over 20 s and report
being throttled; a client under its quota is not throttled. Quotas are set with
`spate quota`, as with Kafka's kafka-configs.sh."""

import json
import subprocess
import threading
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import SPATE_BIN, Broker, unique_topic  # noqa: E402

QUOTA = 1024 * 1024  # bytes per second
MEASURE_S = 20
WARM_UP_S = 5  # the first seconds let a client burst until its window fills, as in Kafka
RECORD = b"q" * 1000


@pytest.fixture(scope="module")
def quota_broker(tmp_path_factory):
    spate = Broker(tmp_path_factory.mktemp("spate") / "data").start()
    yield spate
    assert spate.stop() == 0, spate.log()


def spate_quota(broker, *args):
    """Runs `spate quota ARGS` against `broker`; returns its standard output."""
    done = subprocess.run([SPATE_BIN, "quota", *args, "--bootstrap-server", broker.bootstrap],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, (done, broker.log())
    return done.stdout


def create_topic(broker, name):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)


def steady_rate(samples):
    """Bytes per second between WARM_UP_S and WARM_UP_S + MEASURE_S of (time, total) samples."""
    start = next(total for at, total in samples if at >= WARM_UP_S)
    end = next(total for at, total in samples if at >= WARM_UP_S + MEASURE_S)
    return (end - start) / MEASURE_S


def produce_flat_out(broker, client_id, topic, seconds):
    """Produces as fast as the broker lets for `seconds`; returns (time, bytes acked) samples
    and the largest throttle time librdkafka reported."""
    acked = [0]
    throttles = []
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "client.id": client_id, "linger.ms": 5,
        "queue.buffering.max.kbytes": 4096,
        "throttle_cb": lambda event: throttles.append(event.throttle_time),
    })

    def delivered(error, message):
        if error is None:
            acked[0] += len(message.value())

    samples = []
    started = time.monotonic()
    while (now := time.monotonic() - started) < seconds:
        try:
            producer.produce(topic, RECORD, on_delivery=delivered)
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
        samples.append((now, acked[0]))
    producer.flush(60)
    return samples, max(throttles, default=0)


def consume_flat_out(broker, client_id, topic, seconds):
    throttles = []
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap, "client.id": client_id,
        "group.id": unique_topic("quota-reader"), "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "throttle_cb": lambda event: throttles.append(event.throttle_time),
    })
    consumer.subscribe([topic])
    read = 0
    samples = []
    started = time.monotonic()
    while (now := time.monotonic() - started) < seconds:
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            read += len(message.value())
        samples.append((now, read))
    consumer.close()
    return samples, max(throttles, default=0)


def fill(broker, topic, megabytes):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for _ in range(megabytes * 1024 * 1024 // len(RECORD)):
        while True:
            try:
                producer.produce(topic, RECORD)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def largest_throttle(metrics):
    """The largest throttle-time-max kafka-python reports, whichever metric group holds it
    (2.x: produce-/fetch-throttle-time-max; 3.x: throttle-time-max per connection)."""
    return max(
        (value for group in metrics.values() for name, value in group.items()
         if name.endswith("throttle-time-max") and isinstance(value, (int, float))),
        default=0,
    )


def within(rate, quota):
    return abs(rate - quota) <= 0.1 * quota


def test_confluent_producer_over_its_quota_gets_the_quota_rate(quota_broker):
    topic = unique_topic("produce-quota")
    create_topic(quota_broker, topic)
    spate_quota(quota_broker, "set", "--client-id", "limited-producer",
                "--producer-byte-rate", str(QUOTA))
    samples, throttle = produce_flat_out(quota_broker, "limited-producer", topic,
                                         WARM_UP_S + MEASURE_S + 0.5)
    rate = steady_rate(samples)
    assert within(rate, QUOTA), f"{rate / 1e6:.2f} MB/s against a quota of {QUOTA / 1e6:.2f}"
    assert throttle > 0, "librdkafka was told it was throttled"


def test_a_client_under_its_quota_is_not_throttled(quota_broker):
    topic = unique_topic("under-quota")
    create_topic(quota_broker, topic)
    spate_quota(quota_broker, "set", "--client-id", "roomy", "--producer-byte-rate",
                str(10_000 * QUOTA), "--consumer-byte-rate", str(10_000 * QUOTA))
    samples, throttle = produce_flat_out(quota_broker, "roomy", topic, 3)
    assert throttle == 0
    assert samples[-1][1] > 3 * QUOTA, "far faster than the other client's quota"
    _, throttle = consume_flat_out(quota_broker, "roomy", topic, 3)
    assert throttle == 0


def test_confluent_consumer_over_its_quota_gets_the_quota_rate(quota_broker):
    topic = unique_topic("fetch-quota")
    create_topic(quota_broker, topic)
    fill(quota_broker, topic, 40)
    spate_quota(quota_broker, "set", "--client-id", "limited-consumer",
                "--consumer-byte-rate", str(QUOTA))
    samples, throttle = consume_flat_out(quota_broker, "limited-consumer", topic,
                                         WARM_UP_S + MEASURE_S + 0.5)
    rate = steady_rate(samples)
    assert within(rate, QUOTA), f"{rate / 1e6:.2f} MB/s against a quota of {QUOTA / 1e6:.2f}"
    assert throttle > 0


def test_kafka_python_over_produce_and_fetch_quotas(quota_broker):
    kafka = pytest.importorskip("kafka")
    topic = unique_topic("kafka-python-quota")
    create_topic(quota_broker, topic)
    spate_quota(quota_broker, "set", "--client-id", "kp-limited",
                "--producer-byte-rate", str(QUOTA), "--consumer-byte-rate", str(QUOTA))
    producer = kafka.KafkaProducer(bootstrap_servers=quota_broker.bootstrap,
                                   client_id="kp-limited", linger_ms=5)
    acked = [0]
    lock = threading.Lock()

    def delivered(_metadata):
        with lock:
            acked[0] += len(RECORD)

    samples = []
    sent = 0
    started = time.monotonic()
    while (now := time.monotonic() - started) < WARM_UP_S + MEASURE_S + 0.5:
        with lock:
            done = acked[0]
        samples.append((now, done))
        if sent - done > 4 * 1024 * 1024:
            # kafka-python buffers without bound: keep 4 MiB in flight, flat out otherwise.
            time.sleep(0.01)
            continue
        producer.send(topic, RECORD).add_callback(delivered)
        sent += len(RECORD)
    producer.flush(60)
    metrics = producer.metrics()
    producer.close()
    rate = steady_rate(samples)
    assert within(rate, QUOTA), f"{rate / 1e6:.2f} MB/s against a quota of {QUOTA / 1e6:.2f}"
    assert largest_throttle(metrics) > 0, metrics

    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=quota_broker.bootstrap,
                                   client_id="kp-limited", auto_offset_reset="earliest",
                                   enable_auto_commit=False, group_id=unique_topic("kp"))
    read = 0
    samples = []
    started = time.monotonic()
    while (now := time.monotonic() - started) < WARM_UP_S + MEASURE_S + 0.5:
        for records in consumer.poll(timeout_ms=100).values():
            read += sum(len(record.value) for record in records)
        samples.append((now, read))
    metrics = consumer.metrics()
    consumer.close()
    rate = steady_rate(samples)
    assert within(rate, QUOTA), f"{rate / 1e6:.2f} MB/s against a quota of {QUOTA / 1e6:.2f}"
    assert largest_throttle(metrics) > 0, metrics


def test_quotas_are_listed_removed_and_kept_across_a_restart(tmp_path):
    broker = Broker(tmp_path / "data").start()
    try:
        spate_quota(broker, "set", "--client-id-default", "--producer-byte-rate", "5000")
        spate_quota(broker, "set", "--user", "ANONYMOUS", "--client-id", "app",
                    "--consumer-byte-rate", "7000")
    finally:
        assert broker.stop() == 0, broker.log()
    broker.start()
    try:
        listed = spate_quota(broker, "list", "--output", "json")
        quotas = {(q["user"], q["client_id"]): q["values"] for q in json.loads(listed)}
        assert quotas == {
            (None, "<default>"): {"producer_byte_rate": 5000.0},
            ("ANONYMOUS", "app"): {"consumer_byte_rate": 7000.0},
        }
        spate_quota(broker, "remove", "--client-id-default")
        listed = spate_quota(broker, "list", "--output", "json")
        assert len(json.loads(listed)) == 1
        refused = subprocess.run(
            [SPATE_BIN, "quota", "set", "--client-id", "x", "--producer-byte-rate=-5",
             "--bootstrap-server", broker.bootstrap],
            capture_output=True, timeout=30,
        )
        assert refused.returncode != 0 and b"positive" in refused.stderr, refused
    finally:
        assert broker.stop() == 0, broker.log()


def test_a_request_time_quota_throttles_a_busy_client(quota_broker):
    """request_percentage: a client allowed 0.1% of a core (1 ms a second) that keeps the
    broker busy is throttled; the throttle comes back in its Produce responses."""
    topic = unique_topic("request-quota")
    create_topic(quota_broker, topic)
    spate_quota(quota_broker, "set", "--client-id", "busy", "--request-percentage", "0.1")
    before = throttled_requests(quota_broker)
    _, throttle = produce_flat_out(quota_broker, "busy", topic, 4)
    assert throttle > 0
    assert throttled_requests(quota_broker) > before
    # Spread over two producers with the same client id (two connections, most likely on
    # both cores), the byte quota still holds for both together.
    spate_quota(quota_broker, "set", "--client-id", "shared", "--producer-byte-rate", str(QUOTA))
    results = []

    def run():
        results.append(produce_flat_out(quota_broker, "shared", topic, WARM_UP_S + MEASURE_S + 0.5)[0])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(steady_rate(samples) for samples in results)
    assert within(rate, QUOTA), f"{rate / 1e6:.2f} MB/s together against {QUOTA / 1e6:.2f}"


def throttled_requests(broker):
    for line in broker.metrics().splitlines():
        if line.startswith("spate_throttled_requests_total "):
            return float(line.split()[1])
    return 0.0
