"""A consume-transform-produce job for test_transactions.py: reads `source` in the consumer
group `job-group` (read_committed), writes `out-<value>` to `sink` and commits the consumed
offsets inside the same transaction, one transaction per poll of up to 10 records, forever
(the test kills it).

Usage: eos_worker.py BOOTSTRAP SOURCE SINK"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer


def main():
    bootstrap, source, sink = sys.argv[1:4]
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "job-group",
        # A static member: the restarted incarnation takes the killed one's place at once
        # instead of waiting out its session.
        "group.instance.id": "job-worker",
        "session.timeout.ms": 6000,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe([source])
    # One transactional id for the job: a restarted incarnation fences the killed one and
    # aborts its open transaction.
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": "job-transformer",
    })
    producer.init_transactions(60)
    while True:
        messages = consumer.consume(10, 0.5)
        messages = [message for message in messages if not message.error()]
        if not messages:
            continue
        producer.begin_transaction()
        for message in messages:
            producer.produce(sink, key=message.key(), value=b"out-" + message.value())
        try:
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(60)
            # A little work per transaction, so that the test's kills land mid-job.
            time.sleep(0.05)
        except KafkaException as error:
            if error.args[0].txn_requires_abort():
                producer.abort_transaction(60)
                # Back to the committed offsets: the aborted batch is processed again.
                for partition in consumer.committed(consumer.assignment(), timeout=60):
                    partition.offset = max(partition.offset, 0)
                    consumer.seek(partition)
                continue
            raise


if __name__ == "__main__":
    main()
