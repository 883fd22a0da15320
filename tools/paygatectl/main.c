/*
 * paygatectl: asks the broker what is running.
 *
 *   paygatectl [--broker ENDPOINT] [--timeout MS] services [--json] [SERVICE]
 *   paygatectl [--broker ENDPOINT] [--timeout MS] probe [--unreachable-ok]
 *              SERVICE [INSTANCE_PREFIX]
 *
 *   paygatectl [--broker ENDPOINT] [--timeout MS] call SERVICE METHOD --json '{...}'
 *   paygatectl [--broker ENDPOINT] tail TOPIC [--group G] [--from-beginning] [--max N]
 *   paygatectl [--broker ENDPOINT] [--timeout MS] topics|groups [--json] [TOPIC]
 *   paygatectl [--broker ENDPOINT] [--timeout MS] demo [--verbose]
 *
 * call, tail, topics, groups and demo live in files of their own
 * (commands.h); `paygatectl COMMAND --help` explains each.
 *
 * Exit codes: 0 answered, 1 the broker did not answer or refused, 2 usage.
 * probe: 0 an instance of SERVICE whose id starts with INSTANCE_PREFIX is
 * registered, 1 otherwise (Kubernetes exec probes, deploy/README.md).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "config/config.h"
#include "log/log.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

static void usage(FILE *out)
{
    fputs("usage: paygatectl [--broker ENDPOINT] [--timeout MS] COMMAND\n"
          "\n"
          "commands:\n"
          "  services [--json] [SERVICE]   live services and instances (discovery),\n"
          "                                with heartbeat age and requests in flight,\n"
          "                                and the event bus: topics, groups, lag\n"
          "  probe [--unreachable-ok] SERVICE [INSTANCE_PREFIX]\n"
          "                                exit 0 when the broker lists an instance of\n"
          "                                SERVICE whose id starts with INSTANCE_PREFIX,\n"
          "                                1 otherwise (for Kubernetes exec probes)\n"
          "  call SERVICE METHOD [--json JSON] [--user USER_ID]\n"
          "                                any RPC, JSON in and out (the gateway's\n"
          "                                transcoding); `call --help` lists the methods\n"
          "  tail TOPIC [--group GROUP] [--from-beginning] [--max N]\n"
          "                                follow an event bus topic, one JSON line per\n"
          "                                event (payments and wallet decoded)\n"
          "  topics [--json] [TOPIC]       event bus topics: offsets, size, groups\n"
          "  groups [--json] [TOPIC]       consumer groups: committed offset, lag, in flight\n"
          "  demo [--verbose]              run the sample flow (register, log in, top up,\n"
          "                                order, pay, wallet, transactions), step by step\n"
          "\n"
          "Every command takes --help.\n"
          "\n"
          "options:\n"
          "  --broker ENDPOINT  broker to ask (default $PAYGATE_BROKER_ENDPOINT or\n"
          "                     tcp://127.0.0.1:55555)\n"
          "  --timeout MS       give up after MS milliseconds (default 2000)\n"
          "  -h, --help         this text\n"
          "\n"
          "environment: PAYGATE_CURVE_CERT (this client's secret certificate) and\n"
          "  PAYGATE_BROKER_CERT or PAYGATE_BROKER_PUBLIC_KEY (the broker's key); or\n"
          "  PAYGATE_INSECURE_PLAINTEXT=1 (a broker without CURVE, tests only)\n"
          "\n"
          "exit codes: 0 answered, 1 no answer or an error status, 2 usage\n",
          out);
}

static void print_services_text(const Paygate__V1__ListServicesReply *reply)
{
    printf("%-24s %-44s %10s %9s %8s\n", "SERVICE", "INSTANCE", "HEARTBEAT", "IN-FLIGHT", "DONE");
    for (size_t i = 0; i < reply->n_services; i++) {
        const Paygate__V1__ServiceInfo *s = reply->services[i];
        if (s->n_instances == 0)
            printf("%-24s %-44s %10s %9s %8s  (queue %u)\n", s->name, "-", "-", "-", "-",
                   s->queue_depth);
        for (size_t k = 0; k < s->n_instances; k++) {
            const Paygate__V1__InstanceInfo *w = s->instances[k];
            char age[32], flight[32];
            snprintf(age, sizeof age, "%" PRIu64 "ms", w->heartbeat_age_ms);
            snprintf(flight, sizeof flight, "%u/%u", w->in_flight, w->max_in_flight);
            printf("%-24s %-44s %10s %9s %8" PRIu64 "\n", k == 0 ? s->name : "", w->instance_id,
                   age, flight, w->requests_done);
        }
    }
    if (reply->n_topics > 0)
        printf("\n%-24s %-20s %10s %10s %10s %8s %9s\n", "TOPIC", "GROUP", "START", "END",
               "COMMITTED", "LAG", "IN-FLIGHT");
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *t = reply->topics[i];
        printf("%-24s %-20s %10" PRIu64 " %10" PRIu64 "\n", t->name, "-", t->start_offset,
               t->end_offset);
        for (size_t k = 0; k < t->n_groups; k++) {
            const Paygate__V1__GroupInfo *g = t->groups[k];
            printf("%-24s %-20s %10s %10s %10" PRIu64 " %8" PRIu64 " %9u\n", "", g->name, "", "",
                   g->committed_offset, g->lag, g->in_flight);
        }
    }
    const Paygate__V1__BrokerStats *st = reply->stats;
    if (st != NULL)
        printf("\nbroker: up %" PRIu64 " ms, routed %" PRIu64 ", expired %" PRIu64
               ", unavailable %" PRIu64 ", rejected %" PRIu64 ", malformed %" PRIu64
               ", oversized %" PRIu64 ", workers expired %" PRIu64 ", peers refused %" PRIu64
               ", denied %" PRIu64 "\n",
               st->uptime_ms, st->requests_routed, st->requests_expired, st->requests_unavailable,
               st->requests_rejected_full, st->frames_malformed, st->messages_oversized,
               st->workers_expired, st->peers_refused, st->commands_denied);
}

/* Prints a string as a JSON string (the names here are restricted to
 * printable ASCII by the broker; escape quotes and backslashes anyway). */
static void json_string(const char *text)
{
    putchar('"');
    for (const char *c = text; *c; c++) {
        if (*c == '"' || *c == '\\')
            putchar('\\');
        putchar(*c);
    }
    putchar('"');
}

static void print_services_json(const Paygate__V1__ListServicesReply *reply)
{
    printf("{\"services\":[");
    for (size_t i = 0; i < reply->n_services; i++) {
        const Paygate__V1__ServiceInfo *s = reply->services[i];
        printf("%s{\"name\":", i ? "," : "");
        json_string(s->name);
        printf(",\"queue_depth\":%u,\"instances\":[", s->queue_depth);
        for (size_t k = 0; k < s->n_instances; k++) {
            const Paygate__V1__InstanceInfo *w = s->instances[k];
            printf("%s{\"instance_id\":", k ? "," : "");
            json_string(w->instance_id);
            printf(",\"heartbeat_age_ms\":%" PRIu64 ",\"in_flight\":%u,\"max_in_flight\":%u,"
                   "\"requests_done\":%" PRIu64 ",\"registered_age_ms\":%" PRIu64
                   ",\"heartbeat_interval_ms\":%u}",
                   w->heartbeat_age_ms, w->in_flight, w->max_in_flight, w->requests_done,
                   w->registered_age_ms, w->heartbeat_interval_ms);
        }
        printf("]}");
    }
    printf("],\"topics\":[");
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *t = reply->topics[i];
        printf("%s{\"name\":", i ? "," : "");
        json_string(t->name);
        printf(",\"start_offset\":%" PRIu64 ",\"end_offset\":%" PRIu64 ",\"bytes\":%" PRIu64
               ",\"published\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"groups\":[",
               t->start_offset, t->end_offset, t->bytes, t->published, t->duplicates);
        for (size_t k = 0; k < t->n_groups; k++) {
            const Paygate__V1__GroupInfo *g = t->groups[k];
            printf("%s{\"name\":", k ? "," : "");
            json_string(g->name);
            printf(",\"committed_offset\":%" PRIu64 ",\"lag\":%" PRIu64 ",\"in_flight\":%u"
                   ",\"consumers\":%u,\"redelivered\":%" PRIu64 ",\"dead_lettered\":%" PRIu64 "}",
                   g->committed_offset, g->lag, g->in_flight, g->consumers, g->redelivered,
                   g->dead_lettered);
        }
        printf("]}");
    }
    printf("]");
    const Paygate__V1__BrokerStats *st = reply->stats;
    if (st != NULL)
        printf(",\"stats\":{\"uptime_ms\":%" PRIu64 ",\"requests_routed\":%" PRIu64
               ",\"requests_expired\":%" PRIu64 ",\"requests_unavailable\":%" PRIu64
               ",\"requests_rejected_full\":%" PRIu64 ",\"frames_malformed\":%" PRIu64
               ",\"commands_unknown\":%" PRIu64 ",\"messages_oversized\":%" PRIu64
               ",\"replies_late\":%" PRIu64 ",\"workers_expired\":%" PRIu64
               ",\"sends_failed\":%" PRIu64 ",\"peers_refused\":%" PRIu64
               ",\"commands_denied\":%" PRIu64 "}",
               st->uptime_ms, st->requests_routed, st->requests_expired, st->requests_unavailable,
               st->requests_rejected_full, st->frames_malformed, st->commands_unknown,
               st->messages_oversized, st->replies_late, st->workers_expired, st->sends_failed,
               st->peers_refused, st->commands_denied);
    printf("}\n");
}

static int command_services(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    bool json = false;
    const char *filter = "";
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            puts("usage: paygatectl services [--json] [SERVICE]\n"
                 "Lists live services, their instances, heartbeat age, requests in flight,\n"
                 "and the broker's counters.");
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "paygatectl services: unknown option %s\n", argv[i]);
            return 2;
        } else
            filter = argv[i];
    }
    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL)
        return 1;
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    request.service = (char *)filter;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    rpc_call_opts_t opts = {.deadline_ms = timeout_ms, .principal = "paygatectl"};
    Paygate__V1__Code code =
        rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &reply, &opts, &status);
    int exit_code = 0;
    if (code != PAYGATE__V1__CODE__OK) {
        fprintf(stderr, "paygatectl: %s: %s\n", wire_code_name(code), status.message);
        exit_code = 1;
    } else if (json) {
        print_services_json((Paygate__V1__ListServicesReply *)reply);
    } else {
        print_services_text((Paygate__V1__ListServicesReply *)reply);
    }
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    rpc_client_destroy(&client);
    return exit_code;
}

/* Tells whether the broker lists an instance of a service: the health check
 * of a worker process, which has no port of its own (a Kubernetes exec
 * probe or a Compose healthcheck runs it inside the worker's container).
 * 'argv' holds [--unreachable-ok] SERVICE [INSTANCE_PREFIX]. Returns 0 when
 * the broker's discovery lists an instance of SERVICE whose id starts with
 * INSTANCE_PREFIX (any instance when it is omitted), 1 when it lists none or
 * the broker did not answer, 2 on a usage error. With --unreachable-ok a
 * broker that cannot be reached gives 0: a liveness probe should restart a
 * worker the broker has dropped (stuck, expired), not every worker while the
 * broker itself is away. One line on stdout says why (kubelet keeps it). */
static int command_probe(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    bool unreachable_ok = false;
    const char *service = NULL, *prefix = "";
    int positional = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--unreachable-ok") == 0)
            unreachable_ok = true;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            puts("usage: paygatectl probe [--unreachable-ok] SERVICE [INSTANCE_PREFIX]\n"
                 "Exit 0 when the broker lists an instance of SERVICE whose id starts with\n"
                 "INSTANCE_PREFIX (any instance without it), 1 otherwise. --unreachable-ok:\n"
                 "also 0 when the broker cannot be reached (for liveness probes).");
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "paygatectl probe: unknown option %s\n", argv[i]);
            return 2;
        } else if (positional == 0) {
            service = argv[i];
            positional++;
        } else if (positional == 1) {
            prefix = argv[i];
            positional++;
        } else {
            fprintf(stderr, "paygatectl probe: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (service == NULL || *service == '\0') {
        fprintf(stderr, "usage: paygatectl probe [--unreachable-ok] SERVICE [INSTANCE_PREFIX]\n");
        return 2;
    }
    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL)
        return 1;
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    request.service = (char *)service;
    ProtobufCMessage *message = NULL;
    rpc_status_t status;
    rpc_call_opts_t opts = {.deadline_ms = timeout_ms, .principal = "paygatectl-probe"};
    Paygate__V1__Code code =
        rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &message, &opts, &status);
    int exit_code = 1;
    if (code != PAYGATE__V1__CODE__OK) {
        bool unreachable =
            code == PAYGATE__V1__CODE__UNAVAILABLE || code == PAYGATE__V1__CODE__DEADLINE_EXCEEDED;
        exit_code = unreachable && unreachable_ok ? 0 : 1;
        printf("probe %s: broker %s: %s: %s%s\n", service, endpoint, wire_code_name(code),
               status.message, exit_code == 0 ? " (--unreachable-ok)" : "");
    } else {
        const Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)message;
        size_t prefix_len = strlen(prefix), listed = 0;
        const Paygate__V1__InstanceInfo *found = NULL;
        for (size_t i = 0; i < reply->n_services && found == NULL; i++) {
            const Paygate__V1__ServiceInfo *s = reply->services[i];
            if (strcmp(s->name, service) != 0)
                continue;
            for (size_t k = 0; k < s->n_instances && found == NULL; k++) {
                listed++;
                if (strncmp(s->instances[k]->instance_id, prefix, prefix_len) == 0)
                    found = s->instances[k];
            }
        }
        if (found != NULL) {
            exit_code = 0;
            printf("probe %s: %s registered, heard from %" PRIu64 " ms ago\n", service,
                   found->instance_id, found->heartbeat_age_ms);
        } else {
            printf("probe %s: no instance with id prefix '%s' among %zu listed\n", service, prefix,
                   listed);
        }
    }
    if (message != NULL)
        protobuf_c_message_free_unpacked(message, NULL);
    rpc_client_destroy(&client);
    return exit_code;
}

int main(int argc, char **argv)
{
    log_init_interactive("paygatectl");
    const char *endpoint = getenv("PAYGATE_BROKER_ENDPOINT");
    if (endpoint == NULL || *endpoint == '\0')
        endpoint = "tcp://127.0.0.1:55555";
    int64_t timeout_ms = 2000;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--broker") == 0 && i + 1 < argc) {
            endpoint = argv[++i];
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            if (!config_parse_int(argv[++i], 1, 600000, &timeout_ms)) {
                fprintf(stderr, "paygatectl: --timeout wants milliseconds from 1 to 600000\n");
                return 2;
            }
        } else {
            fprintf(stderr, "paygatectl: unknown option %s\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[i], "services") == 0)
        return command_services(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "probe") == 0)
        return command_probe(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "call") == 0)
        return command_call(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "tail") == 0)
        return command_tail(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "topics") == 0)
        return command_topics(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "groups") == 0)
        return command_groups(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "demo") == 0)
        return command_demo(endpoint, (uint32_t)timeout_ms, argc - i - 1, argv + i + 1);
    fprintf(stderr, "paygatectl: unknown command '%s'\n\n", argv[i]);
    usage(stderr);
    return 2;
}
