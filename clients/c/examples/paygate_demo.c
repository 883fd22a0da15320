/*
 * paygate_demo: the sample flow through the broker, from C with lib/rpc
 * (the C twin of clients/python/paygate_demo.py):
 *
 *   register -> log in -> top up ₹2,000 -> create an order of ₹1,000 ->
 *   pay it -> the order is COMPLETED -> the wallet holds ₹1,000 -> the
 *   transaction history lists the top-up and the payment
 *
 * Each step prints one line and checks the answer; the first failure
 * prints "paygate_demo: step N failed: ..." and exits 1 (2: usage). Every
 * run registers a new user, so it can run again on the same system. The
 * history is recorded from the event bus a moment after the money moves,
 * so the last step polls, for at most --wait-ms.
 *
 *   paygate_demo [--endpoint tcp://127.0.0.1:55555] [--principal c-demo]
 *                [--deadline-ms 5000] [--wait-ms 20000]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep under -std=c17 */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "rpc/rpc.h"
#include "transaction.pb-c.h"
#include "user.pb-c.h"

enum {
    topup_paise = 200000, /* ₹2,000 */
    order_paise = 100000, /* ₹1,000 */
    demo_steps = 8,
    deadline_ms_default = 5000,
    deadline_ms_max = 60000,
    wait_ms_default = 20000, /* for the history to record both movements */
    wait_ms_max = 600000,
    poll_ms = 200,
    history_limit = 10,
    id_bytes_max = 64,
    rupees_bytes = 48, /* "-₹" + 20 digits + 9 commas + ".99" */
};

enum { exit_ok = 0, exit_failed = 1, exit_usage = 2 };

typedef struct {
    rpc_client_t *client;
    rpc_call_opts_t opts; /* deadline and principal; the user id after login */
    int step;
    char user_id[id_bytes_max + 1];
} demo_t;

/* Connects to the broker at 'endpoint'. The one place that sets up the
 * connection: when the broker asks for keys (CURVE), they go here. NULL
 * after printing why. */
static rpc_client_t *demo_connect(const char *endpoint)
{
    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL)
        fprintf(stderr, "paygate_demo: cannot use broker endpoint '%s'\n", endpoint);
    return client;
}

/* Writes 'paise' as rupees the Indian way into 'out': 123456789 ->
 * "₹12,34,567.89", 100000 -> "₹1,000" (no paise when they are 0). */
static const char *rupees(int64_t paise, char out[rupees_bytes])
{
    uint64_t magnitude = paise < 0 ? (uint64_t)0 - (uint64_t)paise : (uint64_t)paise;
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRIu64, magnitude / 100);
    char grouped[32]; /* 20 digits and 9 commas at most */
    size_t g = 0;
    for (int i = 0; i < n; i++) {
        int left = n - i; /* digits from here to the end */
        if (i > 0 && (left == 3 || (left > 3 && left % 2 == 1)))
            grouped[g++] = ',';
        grouped[g++] = digits[i];
    }
    grouped[g] = '\0';
    unsigned part = (unsigned)(magnitude % 100);
    if (part != 0)
        snprintf(out, rupees_bytes, "%s₹%s.%02u", paise < 0 ? "-" : "", grouped, part);
    else
        snprintf(out, rupees_bytes, "%s₹%s", paise < 0 ? "-" : "", grouped);
    return out;
}

/* The name of status code 'code' ("UNAVAILABLE"), from the generated enum. */
static const char *code_name(Paygate__V1__Code code)
{
    const ProtobufCEnumValue *value =
        protobuf_c_enum_descriptor_get_value(&paygate__v1__code__descriptor, (int)code);
    return value != NULL ? value->name : "UNKNOWN_CODE";
}

/* Prints "paygate_demo: step N failed: <what>" to stderr; returns false. */
static bool demo_wrong(const demo_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool demo_wrong(const demo_t *d, const char *fmt, ...)
{
    fprintf(stderr, "paygate_demo: step %d failed: ", d->step);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    return false;
}

/* Calls 'service'.'method' as the demo's user. True with '*reply' set (free
 * it with protobuf_c_message_free_unpacked), or false after printing the
 * status as "service.Method: CODE reason: message key=value". */
static bool demo_call(demo_t *d, const char *service, const char *method,
                      const ProtobufCMessage *request, const ProtobufCMessageDescriptor *reply_desc,
                      ProtobufCMessage **reply)
{
    rpc_status_t status;
    if (rpc_client_call(d->client, service, method, request, reply_desc, reply, &d->opts,
                        &status) == PAYGATE__V1__CODE__OK)
        return true;
    char details[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < status.detail_count && used < sizeof details; i++) {
        int n = snprintf(details + used, sizeof details - used, " %s=%s", status.details[i].key,
                         status.details[i].value);
        used += n > 0 ? (size_t)n : 0;
    }
    return demo_wrong(d, "%s.%s: %s%s%s: %s%s", service, method, code_name(status.code),
                      status.reason[0] ? " " : "", status.reason, status.message, details);
}

/* Prints step 'd->step' as "[n/8] <title> <service.method> -> <summary>". */
static void demo_report(const demo_t *d, const char *title, const char *rpc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void demo_report(const demo_t *d, const char *title, const char *rpc, const char *fmt, ...)
{
    printf("[%d/%d] %-13s %-19s -> ", d->step, demo_steps, title, rpc);
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

static void free_reply(void *reply)
{
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
}

/* Steps 1-2: a new user, logged in; every later call acts for it. */
static bool demo_account(demo_t *d, const char *run_id)
{
    char email[96], password[48];
    uint64_t secret = 0;
    if (getrandom(&secret, sizeof secret, 0) != (ssize_t)sizeof secret)
        secret = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
    snprintf(email, sizeof email, "c-%s@example.com", run_id);
    snprintf(password, sizeof password, "c-%016" PRIx64, secret);

    d->step = 1;
    Paygate__V1__RegisterRequest register_request = PAYGATE__V1__REGISTER_REQUEST__INIT;
    register_request.email = email;
    register_request.password = password;
    register_request.name = "C Demo";
    Paygate__V1__User *user = NULL;
    if (!demo_call(d, "user", "Register", &register_request.base, &paygate__v1__user__descriptor,
                   (ProtobufCMessage **)&user))
        return false;
    bool ok = strncmp(user->id, "usr_", 4) == 0 && strlen(user->id) <= id_bytes_max &&
              strcmp(user->email, email) == 0;
    if (ok) {
        snprintf(d->user_id, sizeof d->user_id, "%s", user->id);
        demo_report(d, "register", "user.Register", "%s (%s)", user->id, user->email);
    } else {
        demo_wrong(d, "registered '%s' as '%s', sent '%s'", user->email, user->id, email);
    }
    free_reply(user);
    if (!ok)
        return false;

    d->step = 2;
    Paygate__V1__LoginRequest login_request = PAYGATE__V1__LOGIN_REQUEST__INIT;
    login_request.email = email;
    login_request.password = password;
    Paygate__V1__LoginReply *login = NULL;
    if (!demo_call(d, "user", "Login", &login_request.base, &paygate__v1__login_reply__descriptor,
                   (ProtobufCMessage **)&login))
        return false;
    ok = strcmp(login->token_type, "Bearer") == 0 && login->access_token[0] != '\0' &&
         login->expires_in > 0;
    if (ok)
        demo_report(d, "log in", "user.Login", "Bearer token for %s, expires in %" PRId64 " s",
                    d->user_id, login->expires_in);
    else
        demo_wrong(d, "no Bearer token (token_type '%s', expires_in %" PRId64 ")",
                   login->token_type, login->expires_in);
    free_reply(login);
    /* From here on every call acts for the new user, as the gateway does
     * after verifying a token. The demo takes the id Register returned. */
    d->opts.user_id = d->user_id;
    return ok;
}

/* Steps 3-7: top up, order, pay, the order completed, the wallet. Sets
 * 'topup_id', 'order_id' and 'payment_id' for step 8. */
static bool demo_pay(demo_t *d, const char *run_id, char topup_id[id_bytes_max + 1],
                     char order_id[id_bytes_max + 1], char payment_id[id_bytes_max + 1])
{
    char key[96], a[rupees_bytes], b[rupees_bytes];
    bool ok;

    d->step = 3;
    snprintf(key, sizeof key, "c-topup-%s", run_id);
    Paygate__V1__TopUpRequest topup_request = PAYGATE__V1__TOP_UP_REQUEST__INIT;
    topup_request.amount = topup_paise;
    topup_request.idempotency_key = key;
    Paygate__V1__TopUp *topup = NULL;
    if (!demo_call(d, "user", "TopUp", &topup_request.base, &paygate__v1__top_up__descriptor,
                   (ProtobufCMessage **)&topup))
        return false;
    ok = topup->amount == topup_paise && topup->balance == topup_paise;
    snprintf(topup_id, id_bytes_max + 1, "%s", topup->id);
    if (ok)
        demo_report(d, "top up", "user.TopUp", "%s, %s added, balance %s", topup->id,
                    rupees(topup->amount, a), rupees(topup->balance, b));
    else
        demo_wrong(d, "topped up %" PRId64 " to a balance of %" PRId64 ", expected %d and %d",
                   topup->amount, topup->balance, topup_paise, topup_paise);
    free_reply(topup);
    if (!ok)
        return false;

    d->step = 4;
    Paygate__V1__CreateOrderRequest order_request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    order_request.amount = order_paise;
    order_request.receipt = "c-1";
    order_request.description = "C client demo";
    Paygate__V1__Order *order = NULL;
    if (!demo_call(d, "order", "Create", &order_request.base, &paygate__v1__order__descriptor,
                   (ProtobufCMessage **)&order))
        return false;
    ok = strncmp(order->id, "ord_", 4) == 0 && order->amount == order_paise &&
         order->status == PAYGATE__V1__ORDER_STATUS__PENDING &&
         strcmp(order->user_id, d->user_id) == 0;
    snprintf(order_id, id_bytes_max + 1, "%s", order->id);
    if (ok)
        demo_report(d, "create order", "order.Create", "%s, %s, PENDING", order->id,
                    rupees(order->amount, a));
    else
        demo_wrong(d,
                   "order '%s' of %" PRId64 " for '%s' in state %d, expected a PENDING ord_... "
                   "of %d for %s",
                   order->id, order->amount, order->user_id, (int)order->status, order_paise,
                   d->user_id);
    free_reply(order);
    if (!ok)
        return false;

    d->step = 5;
    snprintf(key, sizeof key, "c-pay-%s", run_id);
    Paygate__V1__CreatePaymentRequest payment_request = PAYGATE__V1__CREATE_PAYMENT_REQUEST__INIT;
    payment_request.order_id = order_id;
    payment_request.idempotency_key = key;
    Paygate__V1__Payment *payment = NULL;
    if (!demo_call(d, "payment", "Create", &payment_request.base, &paygate__v1__payment__descriptor,
                   (ProtobufCMessage **)&payment))
        return false;
    ok = payment->status == PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED &&
         strcmp(payment->order_id, order_id) == 0 && payment->amount == order_paise;
    snprintf(payment_id, id_bytes_max + 1, "%s", payment->id);
    if (ok)
        demo_report(d, "pay", "payment.Create", "%s, %s, SUCCEEDED", payment->id,
                    rupees(payment->amount, a));
    else
        demo_wrong(d, "payment %s of %" PRId64 " for '%s' is in state %d (%s: %s)", payment->id,
                   payment->amount, payment->order_id, (int)payment->status, payment->failure_code,
                   payment->failure_message);
    free_reply(payment);
    if (!ok)
        return false;

    d->step = 6;
    Paygate__V1__GetOrderRequest get_request = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    get_request.id = order_id;
    Paygate__V1__Order *paid = NULL;
    if (!demo_call(d, "order", "Get", &get_request.base, &paygate__v1__order__descriptor,
                   (ProtobufCMessage **)&paid))
        return false;
    ok = paid->status == PAYGATE__V1__ORDER_STATUS__COMPLETED &&
         strcmp(paid->payment_id, payment_id) == 0;
    if (ok)
        demo_report(d, "order paid", "order.Get", "%s COMPLETED by %s", paid->id, paid->payment_id);
    else
        demo_wrong(d, "order is in state %d with payment '%s', expected COMPLETED with %s",
                   (int)paid->status, paid->payment_id, payment_id);
    free_reply(paid);
    if (!ok)
        return false;

    d->step = 7;
    Paygate__V1__GetWalletRequest wallet_request = PAYGATE__V1__GET_WALLET_REQUEST__INIT;
    Paygate__V1__Wallet *wallet = NULL;
    if (!demo_call(d, "user", "GetWallet", &wallet_request.base, &paygate__v1__wallet__descriptor,
                   (ProtobufCMessage **)&wallet))
        return false;
    const int64_t left = topup_paise - order_paise;
    ok = wallet->balance == left && strcmp(wallet->user_id, d->user_id) == 0;
    if (ok)
        demo_report(d, "wallet", "user.GetWallet", "balance %s", rupees(wallet->balance, a));
    else
        demo_wrong(d, "the wallet of '%s' holds %" PRId64 ", expected %" PRId64, wallet->user_id,
                   wallet->balance, left);
    free_reply(wallet);
    return ok;
}

/* The history entry of 'type' in 'list', or NULL. */
static const Paygate__V1__Transaction *history_find(const Paygate__V1__TransactionList *list,
                                                    const char *type)
{
    for (size_t i = 0; i < list->n_data; i++) {
        if (strcmp(list->data[i]->type, type) == 0)
            return list->data[i];
    }
    return NULL;
}

/* Step 8: the history, polled every poll_ms for at most 'wait_ms', holds
 * exactly the top-up and the payment. */
static bool demo_history(demo_t *d, int64_t wait_ms, const char *topup_id, const char *order_id,
                         const char *payment_id)
{
    d->step = 8;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const int64_t until_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + wait_ms;
    Paygate__V1__ListTransactionsRequest request = PAYGATE__V1__LIST_TRANSACTIONS_REQUEST__INIT;
    request.limit = history_limit;
    Paygate__V1__TransactionList *list = NULL;
    int polls = 0;
    for (;;) {
        if (!demo_call(d, "transaction", "List", &request.base,
                       &paygate__v1__transaction_list__descriptor, (ProtobufCMessage **)&list))
            return false;
        polls++;
        if (history_find(list, "TOPUP") != NULL && history_find(list, "PAYMENT") != NULL)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 >= until_ms) {
            char seen[256] = "nothing";
            size_t used = 0;
            for (size_t i = 0; i < list->n_data && used < sizeof seen; i++) {
                int n = snprintf(seen + used, sizeof seen - used, "%s%s", i ? ", " : "",
                                 list->data[i]->type);
                used += n > 0 ? (size_t)n : 0;
            }
            free_reply(list);
            return demo_wrong(d,
                              "after %" PRId64 " ms the history has %s; expected a TOPUP and a "
                              "PAYMENT (is the event bus on?)",
                              wait_ms, seen);
        }
        free_reply(list);
        list = NULL;
        nanosleep(&(struct timespec){.tv_nsec = poll_ms * 1000L * 1000L}, NULL);
    }
    const Paygate__V1__Transaction *top = history_find(list, "TOPUP");
    const Paygate__V1__Transaction *paid = history_find(list, "PAYMENT");
    bool ok = false;
    if (list->n_data != 2)
        demo_wrong(d, "%zu transactions for a new user, expected 2", list->n_data);
    else if (top->amount != topup_paise || strcmp(top->topup_id, topup_id) != 0)
        demo_wrong(d, "TOPUP of %" PRId64 " for '%s', expected %d for %s", top->amount,
                   top->topup_id, topup_paise, topup_id);
    else if (paid->amount != order_paise || strcmp(paid->payment_id, payment_id) != 0 ||
             strcmp(paid->order_id, order_id) != 0)
        demo_wrong(d, "PAYMENT of %" PRId64 " for '%s'/'%s', expected %d for %s/%s", paid->amount,
                   paid->payment_id, paid->order_id, order_paise, payment_id, order_id);
    else if (strcmp(top->user_id, d->user_id) != 0 || strcmp(paid->user_id, d->user_id) != 0)
        demo_wrong(d, "the history holds another user's transaction");
    else
        ok = true;
    if (ok) {
        demo_report(d, "transactions", "transaction.List", "%zu recorded (after %d %s)",
                    list->n_data, polls, polls == 1 ? "poll" : "polls");
        for (size_t i = 0; i < list->n_data; i++) {
            const Paygate__V1__Transaction *t = list->data[i];
            char a[rupees_bytes];
            /* %16s: "₹" is three bytes, so the column is 14 wide */
            printf("      %s  %-8s %16s  %s\n", t->id, t->type, rupees(t->amount, a),
                   t->description);
        }
    }
    free_reply(list);
    return ok;
}

static void usage(FILE *out)
{
    fputs("usage: paygate_demo [--endpoint ENDPOINT] [--principal NAME] [--deadline-ms MS]\n"
          "                    [--wait-ms MS]\n"
          "\n"
          "Runs paygate's sample flow through the broker and checks each answer:\n"
          "register, log in, top up ₹2,000, create an order of ₹1,000, pay it, the order\n"
          "COMPLETED, the wallet (₹1,000 left), the transaction history.\n"
          "\n"
          "  --endpoint ENDPOINT  the broker (default $PAYGATE_BROKER_ENDPOINT or\n"
          "                       tcp://127.0.0.1:55555)\n"
          "  --principal NAME     caller principal in the call metadata (default c-demo)\n"
          "  --deadline-ms MS     deadline of each call, 1..60000 (default 5000)\n"
          "  --wait-ms MS         how long to wait for the history, 0..600000 (default 20000)\n"
          "\n"
          "exit codes: 0 every step succeeded, 1 a step failed (it says which), 2 usage\n",
          out);
}

/* Parses 'text' as a whole number from 'min' to 'max' into '*value'. */
static bool parse_ms(const char *text, int64_t min, int64_t max, int64_t *value)
{
    char *end = NULL;
    long long parsed = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || parsed < min || parsed > max)
        return false;
    *value = parsed;
    return true;
}

int main(int argc, char **argv)
{
    const char *endpoint = getenv("PAYGATE_BROKER_ENDPOINT");
    if (endpoint == NULL || *endpoint == '\0')
        endpoint = "tcp://127.0.0.1:55555";
    const char *principal = "c-demo";
    int64_t deadline_ms = deadline_ms_default, wait_ms = wait_ms_default;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return exit_ok;
        }
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = value != NULL;
        if (ok && strcmp(arg, "--endpoint") == 0)
            endpoint = value;
        else if (ok && strcmp(arg, "--principal") == 0)
            principal = value;
        else if (ok && strcmp(arg, "--deadline-ms") == 0)
            ok = parse_ms(value, 1, deadline_ms_max, &deadline_ms);
        else if (ok && strcmp(arg, "--wait-ms") == 0)
            ok = parse_ms(value, 0, wait_ms_max, &wait_ms);
        else
            ok = false;
        if (!ok) {
            fprintf(stderr, "paygate_demo: bad argument '%s%s%s'\n\n", arg, value ? " " : "",
                    value ? value : "");
            usage(stderr);
            return exit_usage;
        }
        i++;
    }

    printf("paygate C client demo: broker %s, principal %s\n", endpoint, principal);
    fflush(stdout);
    demo_t d = {.opts = {.deadline_ms = (uint32_t)deadline_ms, .principal = principal}};
    d.client = demo_connect(endpoint);
    if (d.client == NULL)
        return exit_failed;
    char run_id[48], topup_id[id_bytes_max + 1], order_id[id_bytes_max + 1],
        payment_id[id_bytes_max + 1];
    uint32_t salt = 0;
    if (getrandom(&salt, sizeof salt, 0) != (ssize_t)sizeof salt)
        salt = (uint32_t)clock();
    snprintf(run_id, sizeof run_id, "%lld-%d-%06x", (long long)time(NULL), (int)getpid(),
             salt & 0xffffffu);
    bool passed = demo_account(&d, run_id) &&
                  demo_pay(&d, run_id, topup_id, order_id, payment_id) &&
                  demo_history(&d, wait_ms, topup_id, order_id, payment_id);
    rpc_client_destroy(&d.client);
    if (!passed)
        return exit_failed;
    printf("all steps passed\n");
    return exit_ok;
}
