"""Every error path of the package raises its documented exception, never a crash."""

import builtins
import os
import signal
import threading
import time

import pytest

import spate


def test_unknown_setting_names_the_setting(servers):
    with pytest.raises(spate.ConfigError) as error:
        spate.Producer(servers, no_such_thing=1)
    assert error.value.setting == "no.such.thing"
    assert isinstance(error.value, ValueError)


def test_ill_typed_setting_names_the_setting(servers):
    with pytest.raises(spate.ConfigError) as error:
        spate.Producer(servers, acks="sometimes")
    assert error.value.setting == "acks"
    with pytest.raises(spate.ConfigError) as error:
        spate.Consumer(servers, **{"session.timeout.ms": "soon"})
    assert error.value.setting == "session.timeout.ms"
    with pytest.raises(spate.ConfigError, match="consumer_timeout_ms"):
        spate.Consumer(servers, consumer_timeout_ms="never")


def test_bad_bootstrap_servers_is_a_config_error():
    with pytest.raises(spate.ConfigError) as error:
        spate.Admin("no-port-here")
    assert error.value.setting == "bootstrap.servers"


def test_unreachable_broker_is_a_connection_error():
    with pytest.raises(spate.ConnectionError) as error:
        spate.Producer("127.0.0.1:1")
    assert isinstance(error.value, builtins.ConnectionError)


def test_missing_topic_with_auto_creation_off_is_topic_not_found():
    with spate.EmbeddedBroker(auto_create_topics=False) as broker:
        with spate.Producer(broker.bootstrap_servers) as producer:
            with pytest.raises(spate.TopicNotFound) as error:
                producer.send("missing", b"x")
    assert error.value.code == 3
    assert error.value.name == "UNKNOWN_TOPIC_OR_PARTITION"
    assert isinstance(error.value, spate.KafkaError)


def test_partition_out_of_range_is_topic_not_found(servers, topic_name):
    with spate.Producer(servers) as producer:
        producer.send(topic_name, b"x").result(timeout=10)
        with pytest.raises(spate.TopicNotFound):
            producer.send(topic_name, b"x", partition=7)


def test_record_over_max_request_size_is_refused_on_send(servers, topic_name):
    with spate.Producer(servers, max_request_size=1000) as producer:
        with pytest.raises(spate.MessageTooLarge, match="max.request.size"):
            producer.send(topic_name, b"x" * 2000)


def test_record_over_the_topics_max_message_bytes_fails_delivery(servers, admin, topic_name):
    admin.create_topic(topic_name, config={"max.message.bytes": 1000})
    reports = []
    with spate.Producer(servers) as producer:
        future = producer.send(topic_name, b"x" * 5000,
                               on_delivery=lambda error, metadata: reports.append(error))
        with pytest.raises(spate.MessageTooLarge) as error:
            future.result(timeout=30)
        assert isinstance(future.exception(), spate.MessageTooLarge)
    assert error.value.code == 10
    assert len(reports) == 1 and isinstance(reports[0], spate.MessageTooLarge)


def test_acks_all_below_min_insync_replicas_is_not_enough_replicas(servers, admin, topic_name):
    admin.create_topic(topic_name, config={"min.insync.replicas": 2})
    with spate.Producer(servers, acks="all", retries=0) as producer:
        with pytest.raises(spate.NotEnoughReplicas) as error:
            producer.send(topic_name, b"x").result(timeout=30)
        assert error.value.retriable
        # acks=1 does not wait for other replicas.
    with spate.Producer(servers, acks=1) as producer:
        assert producer.send(topic_name, b"x").result(timeout=30).offset == 0


def test_waiting_too_long_is_a_timeout_error(servers, topic_name):
    with spate.Producer(servers, linger_ms=60_000) as producer:
        future = producer.send(topic_name, b"x")
        with pytest.raises(spate.TimeoutError) as error:
            future.result(timeout=0)
        assert isinstance(error.value, builtins.TimeoutError)
        assert not future.done()
        producer.flush(timeout=30)
        assert future.done()


def test_flush_times_out_when_the_broker_is_gone(topic_name):
    broker = spate.EmbeddedBroker()
    producer = spate.Producer(broker.bootstrap_servers, delivery_timeout_ms=3000)
    producer.send(topic_name, b"x").result(timeout=10)
    broker.stop()
    future = producer.send(topic_name, b"y")
    with pytest.raises(spate.TimeoutError, match="without a delivery result"):
        producer.flush(timeout=0.3)
    # The record fails by delivery.timeout.ms.
    assert isinstance(future.exception(timeout=30), spate.SpateError)
    producer.close(timeout=10)


def test_calls_after_close_are_state_errors(servers, topic_name):
    producer = spate.Producer(servers)
    producer.close()
    producer.close()
    assert producer.closed
    with pytest.raises(spate.StateError):
        producer.send(topic_name, b"x")
    consumer = spate.Consumer(servers)
    consumer.close()
    consumer.close()
    with pytest.raises(spate.StateError, match="closed"):
        consumer.poll()
    admin = spate.Admin(servers)
    admin.close()
    with pytest.raises(spate.StateError):
        admin.list_topics()


def test_seeking_an_unassigned_partition_is_a_state_error(servers, topic_name):
    with spate.Consumer(servers) as consumer:
        with pytest.raises(spate.StateError):
            consumer.seek((topic_name, 0), 5)
        with pytest.raises(spate.StateError, match="group.id"):
            consumer.subscribe([topic_name])
        with pytest.raises(spate.StateError):
            consumer.commit()


def test_wrong_argument_types_are_type_errors(servers, topic_name):
    with spate.Producer(servers) as producer:
        with pytest.raises(TypeError, match="value must be bytes"):
            producer.send(topic_name, 12345)
        with pytest.raises(TypeError, match="headers"):
            producer.send(topic_name, b"x", headers=5)
    with spate.Consumer(servers) as consumer:
        with pytest.raises(TypeError, match="topic, partition"):
            consumer.assign(["not-a-pair"])
    with pytest.raises(ValueError):
        spate.EmbeddedBroker(host="not an address")


def test_ctrl_c_interrupts_a_blocking_poll(servers, admin, topic_name):
    admin.create_topic(topic_name)
    with spate.Consumer(servers) as consumer:
        consumer.assign([(topic_name, 0)])
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            consumer.poll(timeout_ms=30_000)
        assert time.monotonic() - started < 5


def test_ctrl_c_interrupts_a_future_wait(servers, topic_name):
    with spate.Producer(servers, linger_ms=60_000) as producer:
        future = producer.send(topic_name, b"x")
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            future.result()
        assert time.monotonic() - started < 5


def test_timeouts_too_long_mean_no_limit_and_negative_ones_are_value_errors(servers, topic_name):
    with spate.Producer(servers) as producer:
        future = producer.send(topic_name, b"x")
        assert future.result(timeout=1e20).offset >= 0
        with pytest.raises(ValueError):
            future.result(timeout=-1)
        producer.flush(timeout=1e300)
