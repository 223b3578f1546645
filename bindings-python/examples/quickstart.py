import spate

with spate.EmbeddedBroker() as broker:
    with spate.Producer(broker.bootstrap_servers) as producer:
        for i in range(3):
            producer.send("greetings", f"hello {i}", key=b"user-1", headers=[("lang", b"en")])
    with spate.Consumer(broker.bootstrap_servers, group_id="readers", topics=["greetings"],
                        auto_offset_reset="earliest", consumer_timeout_ms=1000) as consumer:
        for record in consumer:
            print(record.partition, record.offset, record.key, record.value, record.headers)
