/* errors.c: libspate's error paths, from C. Each check prints "ok <what>" or fails with exit 1.
 *
 *   errors BOOTSTRAP_WITHOUT_AUTO_CREATE
 */
#include <stdio.h>
#include <string.h>

#include "spate.h"

static int failures = 0;

static void expect(int condition, const char *what) {
    const char *message = spate_last_error_message();
    if (condition) {
        printf("ok %s: %s\n", what, message ? message : "(no message)");
    } else {
        printf("FAILED %s: %s\n", what, message ? message : "(no message)");
        failures++;
    }
}

static int mentions(const char *needle) {
    const char *message = spate_last_error_message();
    return message != NULL && strstr(message, needle) != NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s BOOTSTRAP\n", argv[0]);
        return 2;
    }
    spate_config *config = spate_config_new();

    /* Settings. */
    expect(spate_config_set(config, "no.such.setting", "1") == SPATE_STATUS_CONFIG &&
               mentions("no.such.setting"),
           "unknown setting");
    expect(spate_config_set(config, "acks", "sometimes") == SPATE_STATUS_CONFIG && mentions("acks"),
           "bad value");
    expect(spate_config_set(NULL, "acks", "1") == SPATE_STATUS_INVALID_ARGUMENT, "NULL config");
    expect(spate_config_set(config, NULL, "1") == SPATE_STATUS_INVALID_ARGUMENT &&
               mentions("name is NULL"),
           "NULL name");

    /* Idempotence (on by default with acks=all) asked for with settings it cannot work with. */
    spate_config *conflicting = spate_config_new();
    spate_config_set(conflicting, "bootstrap.servers", argv[1]);
    spate_config_set(conflicting, "acks", "1");
    spate_config_set(conflicting, "enable.idempotence", "true");
    spate_producer *refused = NULL;
    expect(spate_producer_new(conflicting, &refused) == SPATE_STATUS_CONFIG && refused == NULL &&
               mentions("enable.idempotence"),
           "idempotence with acks=1");
    spate_config_free(conflicting);

    /* No broker there. */
    spate_config *nowhere = spate_config_new();
    spate_config_set(nowhere, "bootstrap.servers", "127.0.0.1:1");
    spate_producer *unreachable = NULL;
    expect(spate_producer_new(nowhere, &unreachable) == SPATE_STATUS_CONNECT && unreachable == NULL,
           "unreachable broker");
    spate_config_free(nowhere);

    /* A topic that does not exist, with automatic creation off. */
    expect(spate_config_set(config, "bootstrap.servers", argv[1]) == SPATE_STATUS_OK, "bootstrap");
    expect(spate_config_set(config, "group.id", "errors") == SPATE_STATUS_OK, "group.id");
    spate_producer *producer = NULL;
    expect(spate_producer_new(config, &producer) == SPATE_STATUS_OK, "producer ignores group.id");
    expect(spate_producer_send(producer, "missing", SPATE_PARTITION_ANY, NULL, 0,
                               (const uint8_t *)"x", 1, NULL, 0, SPATE_TIMESTAMP_NOW, NULL,
                               NULL) == SPATE_STATUS_KAFKA &&
               spate_last_error_code() == 3 && mentions("UNKNOWN_TOPIC_OR_PARTITION"),
           "missing topic");
    expect(spate_producer_send(producer, NULL, 0, NULL, 0, NULL, 0, NULL, 0, -1, NULL, NULL) ==
               SPATE_STATUS_INVALID_ARGUMENT && mentions("topic is NULL"),
           "NULL topic");
    expect(spate_producer_send(producer, "missing", 0, NULL, 5, NULL, 0, NULL, 0, -1, NULL,
                               NULL) == SPATE_STATUS_INVALID_ARGUMENT && mentions("key"),
           "NULL key with a length");
    expect(spate_producer_send(producer, "missing", 0, NULL, 0, NULL, 0, NULL, 2, -1, NULL,
                               NULL) == SPATE_STATUS_INVALID_ARGUMENT && mentions("headers"),
           "NULL headers with a count");
    expect(spate_producer_flush(NULL, 0) == SPATE_STATUS_INVALID_ARGUMENT, "NULL producer");
    spate_producer_free(producer);
    spate_producer_free(NULL);

    /* A closed consumer. */
    spate_consumer *consumer = NULL;
    expect(spate_consumer_new(config, &consumer) == SPATE_STATUS_OK, "consumer");
    expect(spate_consumer_seek(consumer, "missing", 0, 5) == SPATE_STATUS_STATE,
           "seek an unassigned partition");
    expect(spate_consumer_close(consumer) == SPATE_STATUS_OK, "close");
    expect(spate_consumer_close(consumer) == SPATE_STATUS_OK, "close twice");
    spate_message *message = (spate_message *)1;
    expect(spate_consumer_poll(consumer, 0, &message) == SPATE_STATUS_STATE && message == NULL &&
               mentions("closed"),
           "poll a closed consumer");
    expect(spate_consumer_poll(consumer, 0, NULL) == SPATE_STATUS_INVALID_ARGUMENT,
           "NULL message pointer");
    spate_consumer_free(consumer);
    spate_consumer_free(NULL);

    /* A consumer without a group cannot subscribe or commit. */
    spate_config *no_group = spate_config_new();
    spate_config_set(no_group, "bootstrap.servers", argv[1]);
    spate_consumer *lone = NULL;
    expect(spate_consumer_new(no_group, &lone) == SPATE_STATUS_OK, "consumer without group");
    const char *topics[] = {"missing"};
    expect(spate_consumer_subscribe(lone, topics, 1) == SPATE_STATUS_STATE && mentions("group.id"),
           "subscribe without group.id");
    expect(spate_consumer_commit(lone, NULL, 0, 0) == SPATE_STATUS_STATE, "commit without group.id");
    spate_consumer_free(lone);

    /* Admin. */
    spate_admin *admin = NULL;
    expect(spate_admin_new(no_group, &admin) == SPATE_STATUS_OK, "admin");
    expect(spate_admin_delete_topic(admin, "missing") == SPATE_STATUS_KAFKA &&
               spate_last_error_code() == 3,
           "delete a missing topic");
    expect(spate_admin_create_topic(admin, "made", 2, -1) == SPATE_STATUS_OK, "create");
    expect(spate_admin_create_topic(admin, "made", 2, -1) == SPATE_STATUS_KAFKA &&
               spate_last_error_code() == 36,
           "create twice");
    spate_string_list *list = NULL;
    expect(spate_admin_list_topics(admin, &list) == SPATE_STATUS_OK &&
               spate_string_list_count(list) == 1 &&
               strcmp(spate_string_list_get(list, 0), "made") == 0 &&
               spate_string_list_get(list, 1) == NULL,
           "list topics");
    spate_string_list_free(list);
    expect(spate_admin_delete_topic(admin, "made") == SPATE_STATUS_OK, "delete");
    spate_admin_free(admin);
    spate_admin_free(NULL);
    spate_config_free(no_group);

    /* NULL everywhere else. */
    expect(spate_message_topic(NULL) == NULL && spate_message_offset(NULL) == -1 &&
               spate_message_header_count(NULL) == 0,
           "NULL message accessors");
    expect(spate_broker_stop(NULL) == SPATE_STATUS_OK, "stop a NULL broker");
    expect(spate_broker_start(NULL, 0, NULL) == SPATE_STATUS_INVALID_ARGUMENT, "NULL broker pointer");
    spate_message_free(NULL);
    spate_string_list_free(NULL);
    spate_config_free(NULL);
    spate_config_free(config);
    return failures == 0 ? 0 : 1;
}
