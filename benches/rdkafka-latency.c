/* Produce latency at a fixed rate, with librdkafka, for benches/broker-vs-baselines.sh.
 *
 *   rdkafka-latency BOOTSTRAP TOPIC RATE SECONDS SIZE
 *
 * Sends RATE records of SIZE bytes per second for SECONDS seconds (acks=1, linger.ms=0,
 * idempotence off) and prints {"rate", "records", "p50_ms", "p99_ms", "p999_ms", "max_ms"}.
 * Each record's latency runs from when it was due to be sent, not from when the send call
 * returned, so a stalled broker shows up in the percentiles instead of slowing the sender
 * (coordinated omission corrected). $RDKAFKA_SETTINGS adds or overrides librdkafka settings
 * ("max.in.flight=5,linger.ms=1"). $LATENCY_WINDOWS_MS=50 also prints to stderr, for each 50 ms
 * window of send times, the worst latency of the records due in it, to find when stalls happen.
 * Build: cc -O2 rdkafka-latency.c -lrdkafka -o rdkafka-latency
 */
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double *latencies_ms;
static double start_s;
static double interval_s;
static long failures;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque) {
    (void)rk;
    (void)opaque;
    long index = (long)(intptr_t)message->_private;
    if (index < 0) {
        return; /* the warm-up record */
    }
    if (message->err) {
        failures++;
        latencies_ms[index] = -1;
        return;
    }
    latencies_ms[index] = (now_s() - (start_s + (double)index * interval_s)) * 1000.0;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s BOOTSTRAP TOPIC RATE SECONDS SIZE\n", argv[0]);
        return 2;
    }
    const char *bootstrap = argv[1], *topic = argv[2];
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    long total = (long)(rate * seconds);
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *settings[][2] = {
        {"bootstrap.servers", bootstrap}, {"acks", "1"}, {"linger.ms", "0"},
        {"enable.idempotence", "false"}, {"queue.buffering.max.messages", "2000000"},
        {"queue.buffering.max.kbytes", "2097151"},
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (rd_kafka_conf_set(conf, settings[i][0], settings[i][1], error, sizeof error) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "%s\n", error);
            return 1;
        }
    }
    /* More settings, "name=value,name=value", from $RDKAFKA_SETTINGS (for example
     * max.in.flight=5), applied after the defaults above. */
    const char *extra = getenv("RDKAFKA_SETTINGS");
    if (extra && *extra) {
        char *copy = strdup(extra), *saved = NULL;
        for (char *pair = strtok_r(copy, ",", &saved); pair; pair = strtok_r(NULL, ",", &saved)) {
            char *equals = strchr(pair, '=');
            if (!equals) {
                fprintf(stderr, "RDKAFKA_SETTINGS: %s is not name=value\n", pair);
                return 2;
            }
            *equals = '\0';
            if (rd_kafka_conf_set(conf, pair, equals + 1, error, sizeof error) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "%s\n", error);
                return 1;
            }
        }
        free(copy);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (!rk) {
        fprintf(stderr, "%s\n", error);
        return 1;
    }
    char *value = malloc(size);
    memset(value, 'l', size);
    latencies_ms = calloc((size_t)total, sizeof *latencies_ms);
    /* Warm up: metadata and the connection. */
    rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(value, size),
                      RD_KAFKA_V_OPAQUE((void *)(intptr_t)-1), RD_KAFKA_V_END);
    rd_kafka_flush(rk, 30000);

    interval_s = 1.0 / rate;
    start_s = now_s();
    /* Every 100 µs, send the records that have come due, then sleep: a spinning sender would
     * take a core from the broker it measures. */
    struct timespec tick = {0, 100 * 1000};
    long i = 0;
    while (i < total) {
        double now = now_s();
        for (; i < total && start_s + (double)i * interval_s <= now; i++) {
            rd_kafka_resp_err_t err;
            while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(value, size),
                                            RD_KAFKA_V_OPAQUE((void *)(intptr_t)i), RD_KAFKA_V_END)) ==
                   RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                rd_kafka_poll(rk, 1);
            }
            if (err) {
                fprintf(stderr, "produce: %s\n", rd_kafka_err2str(err));
                return 1;
            }
        }
        rd_kafka_poll(rk, 0);
        nanosleep(&tick, NULL);
    }
    rd_kafka_flush(rk, 60000);
    if (failures) {
        fprintf(stderr, "%ld deliveries failed\n", failures);
        return 1;
    }
    const char *windows = getenv("LATENCY_WINDOWS_MS");
    if (windows && atof(windows) > 0) {
        long per_window = (long)(atof(windows) / 1000.0 * rate);
        if (per_window < 1) {
            per_window = 1;
        }
        for (long first = 0; first < total; first += per_window) {
            double worst = 0;
            for (long j = first; j < total && j < first + per_window; j++) {
                worst = latencies_ms[j] > worst ? latencies_ms[j] : worst;
            }
            fprintf(stderr, "window at %.3f s: worst %.3f ms\n", (double)first * interval_s, worst);
        }
    }
    qsort(latencies_ms, (size_t)total, sizeof *latencies_ms, by_value);
    printf("{\"rate\": %.0f, \"records\": %ld, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, "
           "\"max_ms\": %.4f}\n",
           rate, total, latencies_ms[total / 2], latencies_ms[(long)(total * 0.99)],
           latencies_ms[(long)(total * 0.999)], latencies_ms[total - 1]);
    rd_kafka_destroy(rk);
    free(value);
    free(latencies_ms);
    return 0;
}
