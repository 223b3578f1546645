/* consumer.c: read a topic as a member of a consumer group through libspate.
 *
 *   consumer BOOTSTRAP TOPIC GROUP COUNT
 *
 * Subscribes GROUP to TOPIC from the earliest offset, prints COUNT records as
 * "PARTITION OFFSET KEY VALUE HEADER=VALUE...", commits and closes. Exits 1 if COUNT
 * records do not arrive within 30 s.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "spate.h"

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, spate_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s BOOTSTRAP TOPIC GROUP COUNT\n", argv[0]);
        return 2;
    }
    long count = atol(argv[4]);
    spate_config *config = spate_config_new();
    if (spate_config_set(config, "bootstrap.servers", argv[1]) != SPATE_STATUS_OK ||
        spate_config_set(config, "group.id", argv[3]) != SPATE_STATUS_OK ||
        spate_config_set(config, "auto.offset.reset", "earliest") != SPATE_STATUS_OK ||
        spate_config_set(config, "enable.auto.commit", "false") != SPATE_STATUS_OK) {
        spate_config_free(config);
        return fail("config");
    }
    spate_consumer *consumer = NULL;
    spate_status status = spate_consumer_new(config, &consumer);
    spate_config_free(config);
    if (status != SPATE_STATUS_OK) {
        return fail("spate_consumer_new");
    }
    const char *topics[] = {argv[2]};
    if (spate_consumer_subscribe(consumer, topics, 1) != SPATE_STATUS_OK) {
        spate_consumer_free(consumer);
        return fail("spate_consumer_subscribe");
    }
    long seen = 0;
    for (int waited_ms = 0; seen < count && waited_ms < 30000;) {
        spate_message *message = NULL;
        if (spate_consumer_poll(consumer, 500, &message) != SPATE_STATUS_OK) {
            spate_consumer_free(consumer);
            return fail("spate_consumer_poll");
        }
        if (message == NULL) {
            waited_ms += 500;
            continue;
        }
        size_t key_len = 0, value_len = 0;
        const uint8_t *key = spate_message_key(message, &key_len);
        const uint8_t *value = spate_message_value(message, &value_len);
        printf("%d %" PRId64 " %.*s %.*s", (int)spate_message_partition(message),
               spate_message_offset(message), (int)key_len, key ? (const char *)key : "",
               (int)value_len, value ? (const char *)value : "");
        for (size_t i = 0; i < spate_message_header_count(message); i++) {
            const char *name = NULL;
            const uint8_t *header_value = NULL;
            size_t header_len = 0;
            if (spate_message_header(message, i, &name, &header_value, &header_len) ==
                SPATE_STATUS_OK) {
                printf(" %s=%.*s", name, (int)header_len,
                       header_value ? (const char *)header_value : "");
            }
        }
        printf("\n");
        spate_message_free(message);
        seen++;
    }
    status = spate_consumer_commit(consumer, NULL, 0, 0);
    if (status != SPATE_STATUS_OK) {
        spate_consumer_free(consumer);
        return fail("spate_consumer_commit");
    }
    status = spate_consumer_close(consumer);
    spate_consumer_free(consumer);
    if (status != SPATE_STATUS_OK) {
        return fail("spate_consumer_close");
    }
    return seen == count ? 0 : 1;
}
