/* transactions.c: libspate's transactional producer and read_committed consumer.
 *
 *   transactions BOOTSTRAP
 *
 * Commits a transaction of 5 records to "tx-out", aborts one of 5 more, and checks that a
 * read_committed consumer reads the 5 committed ones only. Then consumes them in the group
 * "tx-group" and sends the consumer's offsets to a committed transaction: the group's
 * committed offset becomes 6 (5 records and the commit marker). Prints "ok" on success.
 */
#include <stdio.h>
#include <string.h>

#include "spate.h"

static int fail(const char *what) {
    printf("FAILED %s: %s\n", what, spate_last_error_message());
    return 1;
}

static spate_status send_value(spate_producer *producer, const char *value) {
    return spate_producer_send(producer, "tx-out", 0, NULL, 0, (const uint8_t *)value,
                               strlen(value), NULL, 0, SPATE_TIMESTAMP_NOW, NULL, NULL);
}

static spate_consumer *new_consumer(const char *bootstrap, const char *group) {
    spate_config *config = spate_config_new();
    spate_consumer *consumer = NULL;
    if (spate_config_set(config, "bootstrap.servers", bootstrap) == SPATE_STATUS_OK &&
        spate_config_set(config, "isolation.level", "read_committed") == SPATE_STATUS_OK &&
        spate_config_set(config, "auto.offset.reset", "earliest") == SPATE_STATUS_OK &&
        (group == NULL || spate_config_set(config, "group.id", group) == SPATE_STATUS_OK)) {
        spate_consumer_new(config, &consumer);
    }
    spate_config_free(config);
    return consumer;
}

/* Reads until nothing arrives for 1.5 s; returns how many values start with "kept-", or -1
 * when one does not. */
static long read_committed(spate_consumer *consumer) {
    long kept = 0;
    for (int quiet_ms = 0; quiet_ms < 1500;) {
        spate_message *message = NULL;
        if (spate_consumer_poll(consumer, 250, &message) != SPATE_STATUS_OK) {
            return -1;
        }
        if (message == NULL) {
            quiet_ms += 250;
            continue;
        }
        quiet_ms = 0;
        size_t len = 0;
        const uint8_t *value = spate_message_value(message, &len);
        if (value == NULL || len < 5 || memcmp(value, "kept-", 5) != 0) {
            spate_message_free(message);
            return -1;
        }
        kept++;
        spate_message_free(message);
    }
    return kept;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s BOOTSTRAP\n", argv[0]);
        return 2;
    }
    spate_config *config = spate_config_new();
    spate_producer *producer = NULL;
    if (spate_config_set(config, "bootstrap.servers", argv[1]) != SPATE_STATUS_OK ||
        spate_config_set(config, "transactional.id", "c-transactions") != SPATE_STATUS_OK ||
        spate_producer_new(config, &producer) != SPATE_STATUS_OK) {
        spate_config_free(config);
        return fail("producer");
    }
    spate_config_free(config);
    if (spate_producer_begin_transaction(producer) != SPATE_STATUS_STATE) {
        return fail("begin before init is a state error");
    }
    if (spate_producer_init_transactions(producer) != SPATE_STATUS_OK) {
        return fail("init_transactions");
    }
    char value[16];
    for (int round = 0; round < 2; round++) {
        if (spate_producer_begin_transaction(producer) != SPATE_STATUS_OK) {
            return fail("begin_transaction");
        }
        for (int i = 0; i < 5; i++) {
            snprintf(value, sizeof value, "%s-%d", round == 0 ? "kept" : "dropped", i);
            if (send_value(producer, value) != SPATE_STATUS_OK) {
                return fail("send");
            }
        }
        spate_status ended = round == 0 ? spate_producer_commit_transaction(producer)
                                        : spate_producer_abort_transaction(producer);
        if (ended != SPATE_STATUS_OK) {
            return fail("end transaction");
        }
    }
    if (send_value(producer, "outside") != SPATE_STATUS_STATE) {
        return fail("a send outside a transaction is a state error");
    }

    spate_consumer *reader = new_consumer(argv[1], NULL);
    spate_topic_partition partition = {"tx-out", 0, -1};
    if (reader == NULL || spate_consumer_assign(reader, &partition, 1) != SPATE_STATUS_OK) {
        return fail("reader");
    }
    long kept = read_committed(reader);
    spate_consumer_free(reader);
    if (kept != 5) {
        printf("FAILED read %ld committed records, not 5\n", kept);
        return 1;
    }

    spate_consumer *grouped = new_consumer(argv[1], "tx-group");
    const char *topics[] = {"tx-out"};
    if (grouped == NULL || spate_consumer_subscribe(grouped, topics, 1) != SPATE_STATUS_OK) {
        return fail("group consumer");
    }
    if (read_committed(grouped) != 5) {
        return fail("group read");
    }
    spate_topic_partition next = {"tx-out", 0, 6};
    if (spate_producer_begin_transaction(producer) != SPATE_STATUS_OK ||
        spate_producer_send_offsets_to_transaction(producer, &next, 1, grouped) !=
            SPATE_STATUS_OK ||
        spate_producer_commit_transaction(producer) != SPATE_STATUS_OK) {
        return fail("offsets in a transaction");
    }
    spate_consumer_free(grouped);
    spate_producer_free(producer);
    printf("ok\n");
    return 0;
}
