/*
 * tail: `paygatectl tail TOPIC`, follow a topic of the event bus and print
 * each event as one JSON line:
 *
 *   {"topic", "offset", "event_id", "key", "timestamp_ms", "delivery_count",
 *    "payload": <the MoneyEvent as JSON for payments and wallet (and their
 *                .dlq), else the payload's bytes in base64>}
 *
 * It is a consumer (lib/events/consumer.h) in a consumer group of its own,
 * named paygatectl-tail-<pid>-<random>, so it takes nothing from the
 * services' groups; --group joins a named group instead (it then shares
 * that group's events with its other members: only for groups of your own).
 * A new group starts at the end of the topic unless --from-beginning.
 * The broker keeps a group's offset after it leaves: the temporary groups
 * remain listed by `paygatectl groups` (there is no command to delete a
 * group yet).
 *
 * Ctrl-C (SIGINT) or SIGTERM stops it; --max N stops after N events.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <jansson.h>

#include "commands.h"
#include "config/config.h"
#include "events.pb-c.h"
#include "events/consumer.h"
#include "json/transcode.h"
#include "wire/wire.h"

enum {
    tail_group_bytes_max = 48, /* the broker's limit on group names */
    tail_max_events_max = 1000000000,
};

/* Topics whose payloads are MoneyEvents (proto/events.proto). */
static const char *const money_topics[] = {"payments", "wallet", NULL};

typedef struct {
    int64_t max;     /* stop after this many events; 0: never */
    int64_t printed; /* events printed so far */
    events_consumer_t *consumer;
    bool write_failed;
} tail_state_t;

static events_consumer_t *volatile signal_consumer;

static void on_stop_signal(int signo)
{
    (void)signo;
    if (signal_consumer != NULL)
        events_consumer_stop(signal_consumer); /* async-signal-safe */
}

static void tail_usage(FILE *out)
{
    fputs("usage: paygatectl tail TOPIC [--group GROUP] [--from-beginning] [--max N]\n"
          "\n"
          "Follows TOPIC of the event bus and prints each event as one JSON line:\n"
          "{topic, offset, event_id, key, timestamp_ms, delivery_count, payload}. The\n"
          "payload is the decoded MoneyEvent for the topics payments and wallet (and\n"
          "their .dlq topics), else its bytes in base64. Ctrl-C stops.\n"
          "\n"
          "options:\n"
          "  --group GROUP      consume as GROUP (default: a new group of its own,\n"
          "                     paygatectl-tail-<pid>-<random>)\n"
          "  --from-beginning   a new group starts at the oldest retained event\n"
          "                     (default: only events published from now on)\n"
          "  --max N            stop after N events\n"
          "  -h, --help         this text\n"
          "\n"
          "exit codes: 0 stopped (Ctrl-C, --max), 1 the consumer failed, 2 usage\n",
          out);
}

/* True when 'topic' carries MoneyEvents ("payments", "payments.dlq", ...). */
static bool is_money_topic(const char *topic)
{
    for (const char *const *t = money_topics; *t != NULL; t++) {
        size_t n = strlen(*t);
        if (strncmp(topic, *t, n) == 0 && (topic[n] == '\0' || strcmp(topic + n, ".dlq") == 0))
            return true;
    }
    return false;
}

/* 'data' of 'len' bytes in standard padded base64, as a new JSON string. */
static json_t *base64_json(const uint8_t *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out_len = (len + 2) / 3 * 4;
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    json_t *text = json_stringn(out, o);
    free(out);
    return text;
}

/* The payload as JSON: the decoded MoneyEvent for money topics (base64 with
 * "payload_error" in 'line' when it does not decode), else base64. */
static json_t *payload_json(const events_delivery_t *event, json_t *line)
{
    if (is_money_topic(event->topic)) {
        ProtobufCMessage *message = protobuf_c_message_unpack(
            &paygate__v1__money_event__descriptor, NULL, event->payload_len, event->payload);
        if (message != NULL) {
            json_t *decoded = transcode_to_json(message);
            protobuf_c_message_free_unpacked(message, NULL);
            if (decoded != NULL)
                return decoded;
        }
        json_object_set_new(line, "payload_error", json_string("not a paygate.v1.MoneyEvent"));
    }
    return base64_json(event->payload, event->payload_len);
}

/* The consumer's handler: prints the event, acknowledges it. Events after
 * --max (already on their way) are refused, so that they stay in the
 * group for whoever consumes it next. */
static bool tail_event(const events_delivery_t *event, void *cls)
{
    tail_state_t *state = cls;
    if (state->write_failed || (state->max > 0 && state->printed >= state->max))
        return false;
    json_t *line = json_object();
    json_object_set_new(line, "topic", json_string(event->topic));
    json_object_set_new(line, "offset", json_integer((json_int_t)event->offset));
    json_object_set_new(line, "event_id", json_string(event->event_id));
    json_object_set_new(line, "key", json_string(event->key != NULL ? event->key : ""));
    json_object_set_new(line, "timestamp_ms", json_integer(event->timestamp_ms));
    json_object_set_new(line, "delivery_count", json_integer(event->delivery_count));
    json_object_set_new(line, "payload", payload_json(event, line));
    int rc = json_dumpf(line, stdout, JSON_COMPACT);
    json_decref(line);
    if (rc != 0 || putchar('\n') == EOF || fflush(stdout) != 0) {
        /* stdout is gone (a closed pipe): stop without acknowledging. */
        state->write_failed = true;
        events_consumer_stop(state->consumer);
        return false;
    }
    state->printed++;
    if (state->max > 0 && state->printed >= state->max)
        events_consumer_stop(state->consumer);
    return true;
}

int command_tail(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    (void)timeout_ms; /* a tail waits for events as long as it runs */
    const char *topic = NULL, *group = NULL;
    bool from_beginning = false;
    tail_state_t state = {0};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            tail_usage(stdout);
            return exit_ok;
        } else if (strcmp(arg, "--from-beginning") == 0) {
            from_beginning = true;
        } else if (strcmp(arg, "--group") == 0 && has_value) {
            group = argv[++i];
        } else if (strcmp(arg, "--max") == 0 && has_value) {
            if (!config_parse_int(argv[++i], 1, tail_max_events_max, &state.max)) {
                fprintf(stderr, "paygatectl tail: --max wants a number of events from 1\n");
                return exit_usage;
            }
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "paygatectl tail: unknown option %s%s\n\n", arg,
                    has_value ? "" : " (or its value is missing)");
            tail_usage(stderr);
            return exit_usage;
        } else if (topic == NULL) {
            topic = arg;
        } else {
            fprintf(stderr, "paygatectl tail: unexpected argument %s\n", arg);
            return exit_usage;
        }
    }
    if (topic == NULL) {
        fprintf(stderr, "paygatectl tail: TOPIC is required\n\n");
        tail_usage(stderr);
        return exit_usage;
    }
    if (!wire_topic_name_valid(topic)) {
        fprintf(stderr, "paygatectl tail: '%s' is not a topic name ([a-z0-9][a-z0-9_.-]{0,47})\n",
                topic);
        return exit_usage;
    }
    char own_group[tail_group_bytes_max + 1];
    if (group == NULL) {
        uint32_t random = 0;
        if (getrandom(&random, sizeof random, 0) != (ssize_t)sizeof random)
            random = (uint32_t)getpid() * 2654435761u;
        snprintf(own_group, sizeof own_group, "paygatectl-tail-%d-%08" PRIx32, (int)getpid(),
                 random);
        group = own_group;
    } else if (!wire_topic_name_valid(group)) {
        fprintf(stderr, "paygatectl tail: '%s' is not a group name ([a-z0-9][a-z0-9_.-]{0,47})\n",
                group);
        return exit_usage;
    }

    const char *topics[] = {topic, NULL};
    events_consumer_config_t config = {
        .endpoint = endpoint,
        .group = group,
        .topics = topics,
        .max_in_flight = state.max > 0 && state.max < 16 ? (uint32_t)state.max : 16,
        .start_at_end = !from_beginning,
        .handler = tail_event,
        .state = &state,
    };
    state.consumer = events_consumer_new(&config);
    if (state.consumer == NULL)
        return exit_failed;
    signal_consumer = state.consumer;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = events_consumer_run(state.consumer);
    signal_consumer = NULL;
    events_consumer_destroy(&state.consumer);
    if (rc != 0) {
        fprintf(stderr, "paygatectl tail: the consumer of %s failed (see the log above)\n", topic);
        return exit_failed;
    }
    return state.write_failed ? exit_failed : exit_ok;
}
