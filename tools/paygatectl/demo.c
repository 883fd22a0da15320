/*
 * demo: `paygatectl demo`, the seed's sample flow (README "Try it") run
 * through the broker directly, printing each step:
 *
 *   register -> log in -> top up ₹2,000 -> create an order of ₹1,000 -> pay
 *   it -> read the wallet (₹1,000 must be left) -> read the transactions
 *   (until the payment's appears: the history is recorded from the event
 *   bus, a moment after the payment)
 *
 * Each call goes through json_call (the gateway's transcoder) with the new
 * user's id as the caller in the call metadata, as the gateway would put
 * it after checking the token: paygatectl is an operator's tool. Every run
 * makes a new user (demo-<time>-<pid>@example.com), so it can be run again
 * on the same system. It stops at the first failure, with exit code 1.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "clock/clock.h"
#include "commands.h"
#include "config/config.h"
#include "json_call.h"
#include "money/money.h"

enum {
    demo_topup_amount = 200000, /* ₹2,000 */
    demo_order_amount = 100000, /* ₹1,000 */
    demo_steps = 7,
    demo_wait_ms_default = 20000, /* for the transaction to be recorded */
    demo_wait_ms_max = 600000,
    demo_poll_ms = 200,
};

typedef struct {
    rpc_client_t *client;
    uint32_t timeout_ms;
    bool verbose;
    int step;
    char user_id[72];   /* the caller of every call after register */
    const json_t *last; /* the last reply, printed by demo_step with --verbose */
} demo_t;

static void demo_usage(FILE *out)
{
    fputs("usage: paygatectl demo [--verbose] [--wait MS]\n"
          "\n"
          "Runs the sample flow through the broker and prints each step: register a new\n"
          "user, log in, top up ₹2,000, create an order of ₹1,000, pay it, read the\n"
          "wallet (₹1,000 left), read the transactions. Needs the user, order, payment\n"
          "and transaction services and the broker's event bus.\n"
          "\n"
          "options:\n"
          "  --verbose   also print each reply as JSON\n"
          "  --wait MS   how long to wait for the payment's transaction (default 20000)\n"
          "  -h, --help  this text\n"
          "\n"
          "exit codes: 0 every step succeeded, 1 a step failed (it says which), 2 usage\n",
          out);
}

/* Prints "[n/7] <title> <service.method>  -> <summary>". */
static void demo_step(demo_t *d, const char *title, const char *rpc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void demo_step(demo_t *d, const char *title, const char *rpc, const char *fmt, ...)
{
    printf("[%d/%d] %-13s %-19s -> ", d->step, demo_steps, title, rpc);
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
    if (d->verbose && d->last != NULL) {
        char *text = json_dumps(d->last, JSON_COMPACT);
        printf("      %s\n", text != NULL ? text : "(unprintable)");
        free(text);
    }
    fflush(stdout);
}

/* Calls 'service'.'method' with 'request' (taken) as the demo's user.
 * Returns the reply (the caller json_decref()s it), or NULL after printing
 * why the step failed. */
static json_t *demo_call(demo_t *d, const char *service, const char *method, json_t *request)
{
    d->last = NULL;
    ctl_method_t m;
    if (!ctl_method_find(service, method, &m)) {
        fprintf(stderr, "paygatectl demo: %s.%s is not a known method\n", service, method);
        json_decref(request);
        return NULL;
    }
    rpc_call_opts_t opts = {.deadline_ms = d->timeout_ms,
                            .user_id = d->user_id[0] ? d->user_id : NULL,
                            .principal = "paygatectl-demo"};
    json_t *reply = NULL;
    rpc_status_t status;
    transcode_error_t error;
    json_call_result_t result = json_call(d->client, &m, request, &opts, &reply, &status, &error);
    json_decref(request);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "paygatectl demo: step %d failed", d->step);
    if (result == JSON_CALL_FAILED)
        json_call_print_status(stderr, prefix, &m, &status);
    else if (result == JSON_CALL_BAD_REQUEST)
        fprintf(stderr, "%s: %s.%s: %s\n", prefix, service, method, error.message);
    else if (result == JSON_CALL_BAD_REPLY)
        fprintf(stderr, "%s: %s.%s answered something that is not a %s\n", prefix, service, method,
                m.reply->name);
    d->last = reply; /* the caller keeps it until after its demo_step */
    return reply;
}

static const char *field_text(const json_t *object, const char *name)
{
    const char *text = json_string_value(json_object_get(object, name));
    return text != NULL ? text : "";
}

static int64_t field_int(const json_t *object, const char *name)
{
    return (int64_t)json_integer_value(json_object_get(object, name));
}

static const char *inr(int64_t paise, char out[48])
{
    if (!money_format_inr(paise, out, 48))
        snprintf(out, 48, "%" PRId64 " paise", paise);
    return out;
}

/* Says why step 'd->step' is wrong although the call succeeded. */
static int demo_wrong(const demo_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int demo_wrong(const demo_t *d, const char *fmt, ...)
{
    fprintf(stderr, "paygatectl demo: step %d failed: ", d->step);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    return exit_failed;
}

/* The flow; returns the exit code. */
static int demo_run(demo_t *d, int64_t wait_ms)
{
    char run[48], email[96], password[48], key[96], a[48], b[48];
    uint64_t random = 0;
    if (getrandom(&random, sizeof random, 0) != (ssize_t)sizeof random)
        random = (uint64_t)clock_now_us();
    snprintf(run, sizeof run, "%" PRId64 "-%d", (int64_t)time(NULL), (int)getpid());
    snprintf(email, sizeof email, "demo-%s@example.com", run);
    snprintf(password, sizeof password, "demo-%016" PRIx64, random);

    d->step = 1;
    json_t *user = demo_call(
        d, "user", "Register",
        json_pack("{s:s, s:s, s:s}", "email", email, "password", password, "name", "Demo User"));
    if (user == NULL)
        return exit_failed;
    snprintf(d->user_id, sizeof d->user_id, "%s", field_text(user, "id"));
    demo_step(d, "register", "user.Register", "%s (%s)", d->user_id, field_text(user, "email"));
    json_decref(user);
    if (d->user_id[0] == '\0')
        return demo_wrong(d, "the new user has no id");

    d->step = 2;
    json_t *login = demo_call(d, "user", "Login",
                              json_pack("{s:s, s:s}", "email", email, "password", password));
    if (login == NULL)
        return exit_failed;
    bool has_token = field_text(login, "access_token")[0] != '\0';
    demo_step(d, "log in", "user.Login", "%s token issued, expires in %" PRId64 " s",
              field_text(login, "token_type"), field_int(login, "expires_in"));
    json_decref(login);
    if (!has_token)
        return demo_wrong(d, "no access token");

    d->step = 3;
    snprintf(key, sizeof key, "demo-topup-%s", run);
    json_t *topup = demo_call(
        d, "user", "TopUp",
        json_pack("{s:I, s:s}", "amount", (json_int_t)demo_topup_amount, "idempotency_key", key));
    if (topup == NULL)
        return exit_failed;
    int64_t balance = field_int(topup, "balance");
    demo_step(d, "top up", "user.TopUp", "%s, %s added, balance %s", field_text(topup, "id"),
              inr(field_int(topup, "amount"), a), inr(balance, b));
    json_decref(topup);
    if (balance != demo_topup_amount)
        return demo_wrong(d, "balance %" PRId64 ", expected %d", balance, demo_topup_amount);

    d->step = 4;
    json_t *order = demo_call(d, "order", "Create",
                              json_pack("{s:I, s:s, s:s}", "amount", (json_int_t)demo_order_amount,
                                        "receipt", "demo-1", "description", "paygatectl demo"));
    if (order == NULL)
        return exit_failed;
    char order_id[72];
    snprintf(order_id, sizeof order_id, "%s", field_text(order, "id"));
    demo_step(d, "create order", "order.Create", "%s, %s, %s", order_id,
              inr(field_int(order, "amount"), a), field_text(order, "status"));
    json_decref(order);

    d->step = 5;
    snprintf(key, sizeof key, "demo-pay-%s", run);
    json_t *payment =
        demo_call(d, "payment", "Create",
                  json_pack("{s:s, s:s}", "order_id", order_id, "idempotency_key", key));
    if (payment == NULL)
        return exit_failed;
    char payment_id[72];
    snprintf(payment_id, sizeof payment_id, "%s", field_text(payment, "id"));
    bool succeeded = strcmp(field_text(payment, "status"), "SUCCEEDED") == 0;
    demo_step(d, "pay", "payment.Create", "%s, %s, %s", payment_id,
              inr(field_int(payment, "amount"), a), field_text(payment, "status"));
    json_decref(payment);
    if (!succeeded)
        return demo_wrong(d, "the payment did not succeed");

    d->step = 6;
    json_t *wallet = demo_call(d, "user", "GetWallet", json_object());
    if (wallet == NULL)
        return exit_failed;
    balance = field_int(wallet, "balance");
    demo_step(d, "wallet", "user.GetWallet", "balance %s", inr(balance, a));
    json_decref(wallet);
    if (balance != demo_topup_amount - demo_order_amount)
        return demo_wrong(d, "balance %" PRId64 ", expected %d", balance,
                          demo_topup_amount - demo_order_amount);

    d->step = 7;
    int64_t until_ms = clock_now_ms() + wait_ms;
    for (;;) {
        json_t *list = demo_call(d, "transaction", "List", json_pack("{s:i}", "limit", 10));
        if (list == NULL)
            return exit_failed;
        const json_t *data = json_object_get(list, "data");
        bool found = false;
        size_t i;
        const json_t *t;
        json_array_foreach(data, i, t)
        {
            if (strcmp(field_text(t, "payment_id"), payment_id) == 0 &&
                strcmp(field_text(t, "type"), "PAYMENT") == 0)
                found = true;
        }
        if (found || clock_now_ms() >= until_ms) {
            if (found) {
                demo_step(d, "transactions", "transaction.List",
                          "%zu recorded:", json_array_size(data));
                json_array_foreach(data, i, t)
                {
                    printf("      %-8s %12s  %s\n", field_text(t, "type"),
                           inr(field_int(t, "amount"), a), field_text(t, "description"));
                }
            }
            json_decref(list);
            if (!found)
                return demo_wrong(d,
                                  "the payment's transaction was not recorded within %" PRId64
                                  " ms (is the transaction service running, and the "
                                  "broker's event bus on?)",
                                  wait_ms);
            break;
        }
        json_decref(list);
        usleep(demo_poll_ms * 1000);
    }
    printf("demo: done: user %s paid %s for order %s (payment %s)\n", d->user_id,
           inr(demo_order_amount, a), order_id, payment_id);
    return exit_ok;
}

int command_demo(const char *endpoint, uint32_t timeout_ms, int argc, char **argv)
{
    demo_t d = {.timeout_ms = timeout_ms};
    int64_t wait_ms = demo_wait_ms_default;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            demo_usage(stdout);
            return exit_ok;
        } else if (strcmp(argv[i], "--verbose") == 0) {
            d.verbose = true;
        } else if (strcmp(argv[i], "--wait") == 0 && i + 1 < argc) {
            if (!config_parse_int(argv[++i], 0, demo_wait_ms_max, &wait_ms)) {
                fprintf(stderr, "paygatectl demo: --wait wants milliseconds from 0 to %d\n",
                        demo_wait_ms_max);
                return exit_usage;
            }
        } else {
            fprintf(stderr, "paygatectl demo: unexpected argument %s\n\n", argv[i]);
            demo_usage(stderr);
            return exit_usage;
        }
    }
    d.client = rpc_client_new(NULL, endpoint);
    if (d.client == NULL) {
        fprintf(stderr, "paygatectl demo: cannot connect to %s\n", endpoint);
        return exit_failed;
    }
    printf("paygatectl demo: the sample flow through the broker at %s\n", endpoint);
    int rc = demo_run(&d, wait_ms);
    rpc_client_destroy(&d.client);
    return rc;
}
