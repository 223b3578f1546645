/* producer.c: send records to a topic through libspate and report their delivery.
 *
 *   producer BOOTSTRAP TOPIC COUNT [VALUE_BYTES]
 *
 * Sends COUNT records with keys "key-<i % 10>" and either values "value-<i>" and a header
 * "index", or (given VALUE_BYTES, for benchmarks) values of VALUE_BYTES bytes and no header;
 * waits for every delivery report, prints how many were delivered and the throughput (to
 * stderr), and exits 0 only if all were.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spate.h"

struct tally {
    long delivered;
    long failed;
};

static void on_delivery(const spate_delivery_report *report, void *opaque) {
    struct tally *tally = opaque;
    if (report->status == SPATE_STATUS_OK) {
        tally->delivered++;
    } else {
        tally->failed++;
        fprintf(stderr, "not delivered to %s: %s (Kafka error %d)\n", report->topic,
                report->error_message, report->error_code);
    }
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, spate_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BOOTSTRAP TOPIC COUNT [VALUE_BYTES]\n", argv[0]);
        return 2;
    }
    const char *topic = argv[2];
    long count = atol(argv[3]);
    size_t value_bytes = argc > 4 ? (size_t)atol(argv[4]) : 0;

    spate_config *config = spate_config_new();
    if (spate_config_set(config, "bootstrap.servers", argv[1]) != SPATE_STATUS_OK ||
        spate_config_set(config, "linger.ms", "5") != SPATE_STATUS_OK ||
        spate_config_set(config, "acks", "all") != SPATE_STATUS_OK) {
        spate_config_free(config);
        return fail("config");
    }
    spate_producer *producer = NULL;
    spate_status status = spate_producer_new(config, &producer);
    spate_config_free(config);
    if (status != SPATE_STATUS_OK) {
        return fail("spate_producer_new");
    }

    char *fixed = value_bytes ? malloc(value_bytes) : NULL;
    if (fixed) {
        memset(fixed, 'x', value_bytes);
    }
    struct tally tally = {0, 0};
    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    char keys[10][8];
    for (int k = 0; k < 10; k++) {
        snprintf(keys[k], sizeof keys[k], "key-%d", k);
    }
    for (long i = 0; i < count; i++) {
        const char *key = keys[i % 10];
        char value[32], index[32];
        spate_header header = {"index", (const uint8_t *)index, 0};
        const uint8_t *value_bytes_ptr = (const uint8_t *)fixed;
        size_t value_len = value_bytes;
        if (!fixed) {
            value_len = (size_t)snprintf(value, sizeof value, "value-%ld", i);
            value_bytes_ptr = (const uint8_t *)value;
            header.value_len = (size_t)snprintf(index, sizeof index, "%ld", i);
        }
        status = spate_producer_send(producer, topic, SPATE_PARTITION_ANY, (const uint8_t *)key,
                                     strlen(key), value_bytes_ptr, value_len,
                                     fixed ? NULL : &header, fixed ? 0 : 1, SPATE_TIMESTAMP_NOW,
                                     on_delivery, &tally);
        if (status != SPATE_STATUS_OK) {
            free(fixed);
            spate_producer_free(producer);
            return fail("spate_producer_send");
        }
        if (i % 10000 == 0) {
            spate_producer_poll(producer, 0, NULL); /* serve the reports known so far */
        }
    }
    status = spate_producer_flush(producer, 60000);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    free(fixed);
    spate_producer_free(producer);
    if (status != SPATE_STATUS_OK) {
        return fail("spate_producer_flush");
    }
    double seconds = (double)(ended.tv_sec - started.tv_sec) +
                     (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    printf("delivered %ld of %ld records\n", tally.delivered, count);
    fprintf(stderr, "%.0f records/s\n", seconds > 0 ? (double)count / seconds : 0.0);
    return tally.delivered == count ? 0 : 1;
}
