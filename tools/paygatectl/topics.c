/*
 * topics: `paygatectl topics` and `paygatectl groups`, the event bus's
 * topics (offsets, size) and consumer groups (committed offset, lag, in
 * flight), from the broker's discovery answer (broker.services List,
 * TopicInfo and GroupInfo in proto/broker.proto). Text for people, --json
 * (through the gateway's transcoder: the .proto field names) for scripts.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "broker.pb-c.h"
#include "commands.h"
#include "json/transcode.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

typedef struct {
    const char *name; /* "topics" or "groups" */
    bool json;
    const char *topic; /* only this topic, or NULL */
} topics_args_t;

static void topics_usage(FILE *out)
{
    fputs("usage: paygatectl topics [--json] [TOPIC]\n"
          "\n"
          "Lists the event bus's topics: oldest retained and next offset, bytes on disk,\n"
          "events published and duplicates refused since the broker started, and how\n"
          "many consumer groups read each. --json prints the broker's TopicInfo messages\n"
          "(groups included) as {\"topics\": [...]}.\n"
          "\n"
          "exit codes: 0 listed, 1 the broker did not answer, 2 usage\n",
          out);
}

static void groups_usage(FILE *out)
{
    fputs("usage: paygatectl groups [--json] [TOPIC]\n"
          "\n"
          "Lists the consumer groups of every topic (or of TOPIC): the committed offset\n"
          "(every event before it is acknowledged), the lag behind the topic's end,\n"
          "events in flight, consumers connected, redeliveries and dead letters.\n"
          "--json prints {\"groups\": [{\"topic\", ...GroupInfo fields}]}.\n"
          "\n"
          "exit codes: 0 listed, 1 the broker did not answer, 2 usage\n",
          out);
}

/* Parses [--json] [TOPIC]; returns -1 to go on, else the exit code. */
static int parse_args(topics_args_t *args, int argc, char **argv, void (*usage)(FILE *))
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return exit_ok;
        } else if (strcmp(argv[i], "--json") == 0) {
            args->json = true;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "paygatectl %s: unknown option %s\n\n", args->name, argv[i]);
            usage(stderr);
            return exit_usage;
        } else if (args->topic == NULL) {
            args->topic = argv[i];
        } else {
            fprintf(stderr, "paygatectl %s: unexpected argument %s\n", args->name, argv[i]);
            return exit_usage;
        }
    }
    return -1;
}

/* Asks the broker for its discovery answer. NULL, after saying why on
 * stderr, when it does not answer. */
static Paygate__V1__ListServicesReply *list_bus(const char *name, const char *endpoint,
                                                uint32_t timeout_ms)
{
    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL) {
        fprintf(stderr, "paygatectl %s: cannot connect to %s\n", name, endpoint);
        return NULL;
    }
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    rpc_call_opts_t opts = {.deadline_ms = timeout_ms, .principal = "paygatectl"};
    Paygate__V1__Code code =
        rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &reply, &opts, &status);
    rpc_client_destroy(&client);
    if (code != PAYGATE__V1__CODE__OK) {
        fprintf(stderr, "paygatectl %s: broker %s: %s: %s\n", name, endpoint, wire_code_name(code),
                status.message);
        return NULL;
    }
    return (Paygate__V1__ListServicesReply *)reply;
}

static bool topic_selected(const topics_args_t *args, const Paygate__V1__TopicInfo *t)
{
    return args->topic == NULL || strcmp(args->topic, t->name) == 0;
}

/* Prints 'json' (taken) on stdout; false when it could not. */
static bool print_json(json_t *json)
{
    int rc = json != NULL ? json_dumpf(json, stdout, JSON_INDENT(2)) : -1;
    json_decref(json);
    return rc == 0 && putchar('\n') != EOF && fflush(stdout) == 0;
}

int command_topics(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    topics_args_t args = {.name = "topics"};
    int rc = parse_args(&args, argc, argv, topics_usage);
    if (rc >= 0)
        return rc;
    Paygate__V1__ListServicesReply *reply = list_bus(args.name, endpoint, timeout_ms);
    if (reply == NULL)
        return exit_failed;
    bool ok = true;
    if (args.json) {
        json_t *topics = json_array();
        for (size_t i = 0; i < reply->n_topics; i++) {
            if (topic_selected(&args, reply->topics[i]))
                json_array_append_new(topics, transcode_to_json(&reply->topics[i]->base));
        }
        ok = print_json(json_pack("{s:o}", "topics", topics));
    } else {
        printf("%-32s %12s %12s %14s %10s %10s %6s\n", "TOPIC", "START", "END", "BYTES",
               "PUBLISHED", "DUPLICATES", "GROUPS");
        for (size_t i = 0; i < reply->n_topics; i++) {
            const Paygate__V1__TopicInfo *t = reply->topics[i];
            if (topic_selected(&args, t))
                printf("%-32s %12" PRIu64 " %12" PRIu64 " %14" PRIu64 " %10" PRIu64 " %10" PRIu64
                       " %6zu\n",
                       t->name, t->start_offset, t->end_offset, t->bytes, t->published,
                       t->duplicates, t->n_groups);
        }
        if (reply->n_topics == 0)
            printf("(no topics: the broker has no event bus data directory, or nothing was "
                   "published yet)\n");
    }
    protobuf_c_message_free_unpacked(&reply->base, NULL);
    return ok ? exit_ok : exit_failed;
}

int command_groups(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    topics_args_t args = {.name = "groups"};
    int rc = parse_args(&args, argc, argv, groups_usage);
    if (rc >= 0)
        return rc;
    Paygate__V1__ListServicesReply *reply = list_bus(args.name, endpoint, timeout_ms);
    if (reply == NULL)
        return exit_failed;
    bool ok = true;
    json_t *groups = args.json ? json_array() : NULL;
    if (!args.json)
        printf("%-24s %-32s %12s %12s %8s %9s %9s %11s %13s\n", "TOPIC", "GROUP", "COMMITTED",
               "END", "LAG", "IN-FLIGHT", "CONSUMERS", "REDELIVERED", "DEAD-LETTERED");
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *t = reply->topics[i];
        if (!topic_selected(&args, t))
            continue;
        for (size_t k = 0; k < t->n_groups; k++) {
            const Paygate__V1__GroupInfo *g = t->groups[k];
            if (args.json) {
                json_t *group = json_pack("{s:s}", "topic", t->name);
                json_t *fields = transcode_to_json(&g->base);
                json_object_update(group, fields);
                json_decref(fields);
                json_array_append_new(groups, group);
            } else {
                printf("%-24s %-32s %12" PRIu64 " %12" PRIu64 " %8" PRIu64 " %9u %9u %11" PRIu64
                       " %13" PRIu64 "\n",
                       t->name, g->name, g->committed_offset, t->end_offset, g->lag, g->in_flight,
                       g->consumers, g->redelivered, g->dead_lettered);
            }
        }
    }
    if (args.json)
        ok = print_json(json_pack("{s:o}", "groups", groups));
    protobuf_c_message_free_unpacked(&reply->base, NULL);
    return ok ? exit_ok : exit_failed;
}
