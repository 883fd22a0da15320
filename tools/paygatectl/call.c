/*
 * call: `paygatectl call SERVICE METHOD --json '{...}'`, any RPC the
 * method table knows (methods.h), JSON in and out through the gateway's
 * transcoder (json_call.h). The reply goes to stdout as JSON; a failure
 * goes to stderr as code, reason, message and details, with exit code 1.
 *
 * This is an operator's tool: the caller identity (--user) is whatever the
 * operator says, as the gateway says it after checking a token. Anyone who
 * can reach the broker can do the same (broker/README.md: peer
 * authentication is issue 7).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commands.h"
#include "config/config.h"
#include "json_call.h"
#include "methods.h"

enum {
    call_stdin_bytes_max = 1024 * 1024, /* --json - reads at most this */
    call_timeout_ms_max = 600000,
};

static void call_usage(FILE *out)
{
    fputs("usage: paygatectl call SERVICE METHOD [--json JSON|-] [options]\n"
          "\n"
          "Calls SERVICE.METHOD through the broker. The request is JSON with the .proto\n"
          "field names (int64 as numbers, enums by name, bytes as base64), transcoded as\n"
          "the HTTP gateway does; the reply is printed as JSON with every field.\n"
          "\n"
          "options:\n"
          "  --json JSON        the request (default {}); - reads it from stdin\n"
          "  --user USER_ID     caller identity in the call's metadata (the acting user)\n"
          "  --principal NAME   caller principal (default paygatectl; the user service\n"
          "                     refuses Debit/Credit from \"gateway\"); the broker\n"
          "                     accepts only principals this client's CURVE key may\n"
          "                     claim (paygatectl's: paygatectl*)\n"
          "  --request-id ID    tracing id (default: a new one)\n"
          "  --timeout MS       deadline of the call (default: the global --timeout)\n"
          "  --compact          print the reply on one line\n"
          "  -h, --help         this text\n"
          "\n"
          "exit codes: 0 the reply is printed; 1 the JSON does not fit the request, or\n"
          "the call failed (code, reason, message and details on stderr); 2 usage\n"
          "\n"
          "methods:\n",
          out);
    ctl_methods_print(out);
}

/* Reads all of stdin (at most call_stdin_bytes_max) into a new string. */
static char *read_stdin(void)
{
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    while (text != NULL) {
        if (len + 1 == cap) {
            if (cap >= call_stdin_bytes_max) {
                fprintf(stderr, "paygatectl call: stdin is over %d bytes\n", call_stdin_bytes_max);
                free(text);
                return NULL;
            }
            char *grown = realloc(text, cap * 2);
            if (grown == NULL)
                break;
            text = grown;
            cap *= 2;
        }
        size_t n = fread(text + len, 1, cap - 1 - len, stdin);
        len += n;
        if (n == 0) {
            if (ferror(stdin)) {
                fprintf(stderr, "paygatectl call: cannot read stdin: %s\n", strerror(errno));
                free(text);
                return NULL;
            }
            text[len] = '\0';
            return text;
        }
    }
    free(text);
    fprintf(stderr, "paygatectl call: out of memory\n");
    return NULL;
}

int command_call(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    const char *service = NULL, *method_name = NULL, *json_text = "{}";
    rpc_call_opts_t opts = {.deadline_ms = timeout_ms, .principal = "paygatectl"};
    bool compact = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            call_usage(stdout);
            return exit_ok;
        } else if (strcmp(arg, "--compact") == 0) {
            compact = true;
        } else if (strcmp(arg, "--json") == 0 && has_value) {
            json_text = argv[++i];
        } else if (strcmp(arg, "--user") == 0 && has_value) {
            opts.user_id = argv[++i];
        } else if (strcmp(arg, "--principal") == 0 && has_value) {
            opts.principal = argv[++i];
        } else if (strcmp(arg, "--request-id") == 0 && has_value) {
            opts.request_id = argv[++i];
        } else if (strcmp(arg, "--timeout") == 0 && has_value) {
            int64_t ms;
            if (!config_parse_int(argv[++i], 1, call_timeout_ms_max, &ms)) {
                fprintf(stderr, "paygatectl call: --timeout wants milliseconds from 1 to %d\n",
                        call_timeout_ms_max);
                return exit_usage;
            }
            opts.deadline_ms = (uint32_t)ms;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "paygatectl call: unknown option %s%s\n\n", arg,
                    has_value ? "" : " (or its value is missing)");
            call_usage(stderr);
            return exit_usage;
        } else if (service == NULL) {
            service = arg;
        } else if (method_name == NULL) {
            method_name = arg;
        } else {
            fprintf(stderr, "paygatectl call: unexpected argument %s\n", arg);
            return exit_usage;
        }
    }
    if (service == NULL || method_name == NULL) {
        fprintf(stderr, "paygatectl call: SERVICE and METHOD are required\n\n");
        call_usage(stderr);
        return exit_usage;
    }
    ctl_method_t method;
    if (!ctl_method_find(service, method_name, &method)) {
        fprintf(stderr, "paygatectl call: unknown method %s %s; known methods:\n", service,
                method_name);
        ctl_methods_print(stderr);
        return exit_usage;
    }

    char *from_stdin = NULL;
    if (strcmp(json_text, "-") == 0) {
        from_stdin = read_stdin();
        if (from_stdin == NULL)
            return exit_failed;
        json_text = from_stdin;
    }
    json_error_t parse_error;
    json_t *request = json_loads(json_text, JSON_REJECT_DUPLICATES, &parse_error);
    free(from_stdin);
    if (request == NULL) {
        fprintf(stderr, "paygatectl call: --json is not valid JSON: %s (line %d, column %d)\n",
                parse_error.text, parse_error.line, parse_error.column);
        return exit_failed;
    }
    if (!json_is_object(request)) {
        fprintf(stderr, "paygatectl call: --json must be a JSON object, like {\"field\": 1}\n");
        json_decref(request);
        return exit_failed;
    }

    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL) {
        fprintf(stderr, "paygatectl call: cannot connect to %s\n", endpoint);
        json_decref(request);
        return exit_failed;
    }
    json_t *reply = NULL;
    rpc_status_t status;
    transcode_error_t error;
    json_call_result_t result = json_call(client, &method, request, &opts, &reply, &status, &error);
    json_decref(request);
    rpc_client_destroy(&client);
    switch (result) {
    case JSON_CALL_OK:
        break;
    case JSON_CALL_BAD_REQUEST:
        fprintf(stderr, "paygatectl call: the request does not fit %s: %s\n", method.request->name,
                error.message);
        return exit_failed;
    case JSON_CALL_FAILED:
        json_call_print_status(stderr, "paygatectl call", &method, &status);
        return exit_failed;
    case JSON_CALL_BAD_REPLY:
        fprintf(stderr, "paygatectl call: %s.%s answered something that is not a %s\n",
                method.service, method.method, method.reply->name);
        return exit_failed;
    }
    int rc = json_dumpf(reply, stdout, compact ? JSON_COMPACT : JSON_INDENT(2));
    json_decref(reply);
    if (rc != 0 || putchar('\n') == EOF || fflush(stdout) != 0) {
        fprintf(stderr, "paygatectl call: cannot write the reply: %s\n", strerror(errno));
        return exit_failed;
    }
    return exit_ok;
}
