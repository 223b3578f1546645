"""spate.Admin: topics, configs, partitions, groups and their offsets."""

import pytest

import spate


def test_topics_are_created_listed_described_altered_grown_and_deleted(admin, topic_name):
    admin.create_topic(topic_name, num_partitions=2, config={"retention.ms": 3_600_000})
    assert topic_name in admin.list_topics()
    assert "__consumer_offsets" not in admin.list_topics()
    described = admin.describe_topic(topic_name)
    assert described["name"] == topic_name and not described["internal"]
    assert [p["partition"] for p in described["partitions"]] == [0, 1]
    assert all(p["leader"] == p["replicas"][0] for p in described["partitions"])
    admin.alter_topic_config(topic_name, set={"retention.ms": 60_000}, delete=[])
    admin.create_partitions(topic_name, 4)
    assert len(admin.describe_topic(topic_name)["partitions"]) == 4
    with pytest.raises(spate.KafkaError) as refused:
        admin.create_partitions(topic_name, 2)
    assert refused.value.name == "INVALID_PARTITIONS"
    admin.delete_topic(topic_name)
    assert topic_name not in admin.list_topics()
    with pytest.raises(spate.TopicNotFound):
        admin.describe_topic(topic_name)
    with pytest.raises(spate.TopicNotFound) as missing:
        admin.delete_topic(topic_name)
    assert missing.value.code == 3


def test_a_bad_topic_config_is_refused(admin, topic_name):
    with pytest.raises(spate.KafkaError) as refused:
        admin.create_topic(topic_name, config={"cleanup.policy": "sometimes"})
    assert refused.value.name == "INVALID_CONFIG"


def test_groups_are_listed_described_and_their_offsets_reset(servers, admin, topic_name):
    with spate.Producer(servers) as producer:
        for i in range(10):
            producer.send(topic_name, str(i), partition=0)
    group = f"{topic_name}-group"
    with spate.Consumer(servers, group_id=group, topics=[topic_name],
                        auto_offset_reset="earliest", client_id="reader-1") as consumer:
        records = []
        while len(records) < 10:
            records.extend(consumer.poll(timeout_ms=5000))
        consumer.commit()
        described = admin.describe_group(group)
        assert described["state"] == "Stable"
        (member,) = described["members"]
        assert member["client_id"] == "reader-1"
        assert member["assignment"] == [(topic_name, 0)]
        with pytest.raises(spate.StateError, match="members"):
            admin.reset_group_offsets(group, topic_name, to="earliest")
    assert {"group_id": group, "protocol_type": "consumer", "state": "Empty"} in admin.list_groups()
    assert admin.list_group_offsets(group) == [
        {"topic": topic_name, "partition": 0, "committed": 10, "end": 10, "lag": 0}
    ]
    partition = spate.TopicPartition(topic_name, 0)
    assert admin.reset_group_offsets(group, topic_name, shift_by=-3, dry_run=True) == {partition: 7}
    assert admin.list_group_offsets(group)[0]["committed"] == 10
    assert admin.reset_group_offsets(group, topic_name, to="earliest") == {partition: 0}
    assert admin.reset_group_offsets(group, topic_name, to=4) == {partition: 4}
    assert admin.list_group_offsets(group)[0]["lag"] == 6
    with pytest.raises(spate.ConfigError):
        admin.reset_group_offsets(group, topic_name)
    admin.delete_group(group)
    assert group not in [g["group_id"] for g in admin.list_groups()]


def test_describe_cluster(broker, admin):
    cluster = admin.describe_cluster()
    assert cluster["cluster_id"]
    assert cluster["brokers"] == [
        {"id": cluster["controller_id"], "host": "127.0.0.1", "port": broker.port, "rack": None}
    ]
