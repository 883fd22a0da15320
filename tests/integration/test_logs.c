/*
 * Structured logs of a whole run: every process real (broker with its
 * event bus, user, order, payment, transaction, notification, gateway),
 * PostgreSQL (a scratch database) and Redis, all at PAYGATE_LOG_LEVEL=debug
 * in the default JSON format.
 *
 * Over HTTP: register, log in (also once with a wrong password), top up,
 * create an order and pay it, each with an X-Request-Id of our choosing;
 * a path full of quotes, a newline and a byte that is not UTF-8; a token
 * sent in a query string. Then every process is stopped and its log read:
 *
 *   - every line of every log is one JSON object with time (RFC 3339 UTC
 *     with milliseconds), level, process (the right one), pid, instance
 *     and message; request_id and fields have the right types when there;
 *   - the payment's request id is on the gateway's access line for it and
 *     on the payment, user (Debit), order (Get, MarkPaid), transaction and
 *     notification services' lines about it (the last two through the
 *     event on the bus);
 *   - the password, the wrong password, PAYGATE_JWT_SECRET and the access
 *     token (whole, or its signature alone) are in no log.
 *
 * The logs are kept in $PAYGATE_TEST_LOG_DIR as logs-<process>.log.
 */
/* memmem: _GNU_SOURCE comes from the build flags */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "clock/clock.h"
#include "http_client.h"
#include "proc.h"
#include "system.h"

/* No character in these needs escaping in JSON, so a leak would show as
 * the same bytes in a log file: the byte search below cannot miss it. */
static const char jwt_secret[] = "logs-test-jwt-secret-0123456789abcdefghijklmnopq";
static const char password[] = "Logs-Passw0rd-5e1f-never-logged";
static const char wrong_password[] = "Wrong-Passw0rd-77aa-never-logged";

enum { procs_max = system_processes, id_bytes = 64, log_file_bytes_max = 64 * 1024 * 1024 };

/* In system_process_t order. */
enum { p_broker, p_user, p_order, p_payment, p_transaction, p_notification, p_gateway };

static struct {
    system_t *system;
    pid_t pids[procs_max]; /* as they ran (proc_t forgets once reaped) */
    int http_port;
    /* what the flow produced */
    char email[96];
    char user_id[id_bytes];
    char token[1024];
    char order_id[id_bytes];
    char payment_id[id_bytes];
    char rid_register[id_bytes];
    char rid_login[id_bytes];
    char rid_topup[id_bytes];
    char rid_pay[id_bytes];
    bool stopped;
} sys;

/* ---- the system ----------------------------------------------------------- */

/* Process 'which' of the system. */
static proc_t *procs(int which)
{
    return system_process(sys.system, (system_process_t)which);
}

static int group_setup(void **state)
{
    (void)state;
    static const char *const env[] = {"PAYGATE_LOG_LEVEL=debug", "PAYGATE_LOG_FORMAT=json", NULL};
    system_config_t config = {
        .name = "logs", .jwt_secret = jwt_secret, .rate_limits_off = true, .env = env};
    sys.system = system_new(&config);
    if (sys.system == NULL)
        return -1;
    sys.http_port = system_gateway_port(sys.system);
    for (int i = 0; i < procs_max; i++)
        sys.pids[i] = procs(i)->pid;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    system_destroy(&sys.system);
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------ */

/* Sends a request with X-Request-Id 'request_id' (NULL: none), the access
 * token when 'auth', and 'key' as Idempotency-Key (NULL: none); checks
 * that the response echoes the request id. Returns the status. */
static int call(http_response_t *r, const char *method, const char *path, const char *request_id,
                bool auth, const char *key, const char *body)
{
    char rid_header[128];
    snprintf(rid_header, sizeof rid_header, "X-Request-Id: %s", request_id ? request_id : "");
    const char *extra[] = {request_id ? rid_header : NULL, NULL};
    if (!http_api_request(r, sys.http_port, method, path, auth ? sys.token : NULL, key, body,
                          extra))
        fail_msg("%s %s: %s", method, path, r->error);
    const char *echoed = http_header(r, "X-Request-Id");
    if (request_id != NULL && (echoed == NULL || strcmp(echoed, request_id) != 0))
        fail_msg("%s %s: X-Request-Id %s came back as %s", method, path, request_id,
                 echoed ? echoed : "(none)");
    return r->status;
}

static void copy_field(const http_response_t *r, const char *name, char *out, size_t size)
{
    const char *value = json_string_value(json_object_get(r->json, name));
    if (value == NULL)
        fail_msg("response has no string \"%s\": %s", name, r->body ? r->body : "");
    snprintf(out, size, "%s", value);
}

/* Polls GET 'path' until its body holds 'needle' (30 s at most). */
static void wait_body_holds(const char *path, const char *needle)
{
    int64_t until = clock_now_ms() + 30000;
    for (;;) {
        http_response_t r;
        int status = call(&r, "GET", path, NULL, true, NULL, NULL);
        bool found = status == 200 && r.body != NULL && strstr(r.body, needle) != NULL;
        http_response_free(&r);
        if (found)
            return;
        if (clock_now_ms() > until)
            fail_msg("GET %s: no %s after 30 s", path, needle);
        sleep_ms(200);
    }
}

/* ---- reading the logs --------------------------------------------------------- */

/* The whole file at 'path' (malloc'd, NUL-terminated) and its size. */
static char *file_read(const char *path, size_t *size)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        fail_msg("cannot open %s", path);
    fseek(file, 0, SEEK_END);
    long length = ftell(file);
    fseek(file, 0, SEEK_SET);
    if (length < 0 || length > log_file_bytes_max)
        fail_msg("%s: size %ld is out of bounds", path, length);
    char *data = malloc((size_t)length + 1);
    assert_non_null(data);
    *size = fread(data, 1, (size_t)length, file);
    fclose(file);
    data[*size] = '\0';
    return data;
}

typedef bool (*line_match_fn)(json_t *line, const void *arg);

/* The number of JSON lines of 'which''s log for which 'match' is true. */
static int count_lines(int which, line_match_fn match, const void *arg)
{
    size_t size = 0;
    char *data = file_read(procs(which)->log_path, &size);
    int count = 0;
    char *save = NULL;
    for (char *text = strtok_r(data, "\n", &save); text != NULL;
         text = strtok_r(NULL, "\n", &save)) {
        json_t *line = json_loads(text, 0, NULL);
        if (line != NULL && match(line, arg))
            count++;
        json_decref(line);
    }
    free(data);
    return count;
}

static const char *str_of(json_t *object, const char *key)
{
    return json_string_value(json_object_get(object, key));
}

/* A line about request 'rid' whose fields say service/method (either may
 * be NULL: any). */
typedef struct {
    const char *rid;
    const char *service;
    const char *method;
    const char *message_part; /* or NULL */
} about_t;

static bool line_about(json_t *line, const void *arg)
{
    const about_t *a = arg;
    const char *rid = str_of(line, "request_id");
    if (rid == NULL || strcmp(rid, a->rid) != 0)
        return false;
    json_t *fields = json_object_get(line, "fields");
    if (a->service != NULL &&
        (str_of(fields, "service") == NULL || strcmp(str_of(fields, "service"), a->service) != 0))
        return false;
    if (a->method != NULL &&
        (str_of(fields, "method") == NULL || strcmp(str_of(fields, "method"), a->method) != 0))
        return false;
    if (a->message_part != NULL && (str_of(line, "message") == NULL ||
                                    strstr(str_of(line, "message"), a->message_part) == NULL))
        return false;
    return true;
}

/* ---- tests ------------------------------------------------------------------ */

/* The flow, each step with its own request id. */
static void test_flow_with_chosen_request_ids(void **state)
{
    (void)state;
    int pid = (int)getpid();
    snprintf(sys.rid_register, sizeof sys.rid_register, "logs-register-%d", pid);
    snprintf(sys.rid_login, sizeof sys.rid_login, "logs-login-%d", pid);
    snprintf(sys.rid_topup, sizeof sys.rid_topup, "logs-topup-%d", pid);
    snprintf(sys.rid_pay, sizeof sys.rid_pay, "logs-pay-%d", pid);
    snprintf(sys.email, sizeof sys.email, "logs-%d@logs.example", pid);

    http_response_t r;
    char body[512];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"Log Reader\"}",
             sys.email, password);
    assert_int_equal(call(&r, "POST", "/v1/users", sys.rid_register, false, NULL, body), 201);
    copy_field(&r, "id", sys.user_id, sizeof sys.user_id);
    http_response_free(&r);

    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", sys.email,
             wrong_password);
    assert_int_equal(call(&r, "POST", "/v1/auth/login", NULL, false, NULL, body), 401);
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", sys.email, password);
    assert_int_equal(call(&r, "POST", "/v1/auth/login", sys.rid_login, false, NULL, body), 200);
    copy_field(&r, "access_token", sys.token, sizeof sys.token);
    http_response_free(&r);
    assert_non_null(strrchr(sys.token, '.'));

    assert_int_equal(call(&r, "POST", "/v1/wallet/topups", sys.rid_topup, true, "logs-top-1",
                          "{\"amount\":200000}"),
                     201);
    http_response_free(&r);
    assert_int_equal(
        call(&r, "POST", "/v1/orders", NULL, true, NULL, "{\"amount\":150000,\"receipt\":\"r-1\"}"),
        201);
    copy_field(&r, "id", sys.order_id, sizeof sys.order_id);
    http_response_free(&r);

    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", sys.order_id);
    assert_int_equal(call(&r, "POST", "/v1/payments", sys.rid_pay, true, "logs-pay-1", body), 201);
    copy_field(&r, "id", sys.payment_id, sizeof sys.payment_id);
    char status[32];
    copy_field(&r, "status", status, sizeof status);
    assert_string_equal(status, "SUCCEEDED");
    http_response_free(&r);

    /* the event reached both consumers */
    wait_body_holds("/v1/transactions", sys.payment_id);
    wait_body_holds("/v1/notifications", sys.payment_id);

    /* a path with a quote, a newline and a byte that is not UTF-8 */
    assert_int_equal(call(&r, "GET", "/v1/%22q%0Aline%FF", "logs-odd-path", false, NULL, NULL),
                     404);
    http_response_free(&r);
    /* the token in a query string: refused, and never logged */
    char path[1200];
    snprintf(path, sizeof path, "/v1/wallet?access_token=%s", sys.token);
    assert_int_equal(call(&r, "GET", path, "logs-query-token", true, NULL, NULL), 400);
    http_response_free(&r);
}

/* Every process stops cleanly on SIGTERM (exit 0: under the sanitizers
 * also no leak), so its log is complete. */
static void test_processes_stop_cleanly(void **state)
{
    (void)state;
    for (int i = procs_max - 1; i >= 0; i--) {
        if (!proc_stop(procs(i), 15000))
            fail_msg("%s did not exit 0 on SIGTERM (status 0x%x); see %s", system_process_name(i),
                     (unsigned)procs(i)->exit_status, procs(i)->log_path);
    }
    sys.stopped = true;
}

/* Checks one log line; fails naming the file and line. */
static void check_line(int which, const char *text, size_t number)
{
    const char *path = procs(which)->log_path;
    json_error_t error;
    json_t *line = json_loads(text, JSON_REJECT_DUPLICATES, &error);
    if (line == NULL || !json_is_object(line))
        fail_msg("%s:%zu is not a JSON object (%s): %s", path, number, error.text, text);
    const char *time_text = str_of(line, "time");
    int year, month, day, hour, minute, second, millis, used = 0;
    if (time_text == NULL || strlen(time_text) != 24 ||
        sscanf(time_text, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &year, &month, &day, &hour, &minute,
               &second, &millis, &used) != 7 ||
        used != 24)
        fail_msg("%s:%zu: \"time\" is not RFC 3339 UTC with milliseconds: %s", path, number, text);
    const char *level = str_of(line, "level");
    if (level == NULL || (strcmp(level, "debug") != 0 && strcmp(level, "info") != 0 &&
                          strcmp(level, "warn") != 0 && strcmp(level, "error") != 0))
        fail_msg("%s:%zu: bad \"level\": %s", path, number, text);
    const char *process = str_of(line, "process");
    if (process == NULL || strcmp(process, system_process_name(which)) != 0)
        fail_msg("%s:%zu: \"process\" is not %s: %s", path, number, system_process_name(which),
                 text);
    if (json_integer_value(json_object_get(line, "pid")) != sys.pids[which])
        fail_msg("%s:%zu: \"pid\" is not %d: %s", path, number, (int)sys.pids[which], text);
    /* "<process>-<host>-<pid>", "-<thread>" on a worker thread's lines */
    const char *instance = str_of(line, "instance");
    char pid_part[32];
    snprintf(pid_part, sizeof pid_part, "-%d", (int)sys.pids[which]);
    if (instance == NULL || strncmp(instance, process, strlen(process)) != 0 ||
        instance[strlen(process)] != '-' || strstr(instance, pid_part) == NULL)
        fail_msg("%s:%zu: \"instance\" is not %s-<host>%s[-<n>]: %s", path, number, process,
                 pid_part, text);
    if (str_of(line, "message") == NULL)
        fail_msg("%s:%zu: no \"message\": %s", path, number, text);
    json_t *rid = json_object_get(line, "request_id");
    if (rid != NULL && (!json_is_string(rid) || json_string_length(rid) == 0))
        fail_msg("%s:%zu: \"request_id\" is not a non-empty string: %s", path, number, text);
    json_t *fields = json_object_get(line, "fields");
    if (fields != NULL && !json_is_object(fields))
        fail_msg("%s:%zu: \"fields\" is not an object: %s", path, number, text);
    const char *known[] = {"time",       "level",   "process", "pid",      "instance",
                           "request_id", "message", "fields",  "truncated"};
    const char *key;
    json_t *value;
    json_object_foreach(line, key, value)
    {
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok = ok || strcmp(key, known[k]) == 0;
        if (!ok)
            fail_msg("%s:%zu: unexpected key \"%s\": %s", path, number, key, text);
    }
    json_decref(line);
}

static void test_every_line_is_a_json_object(void **state)
{
    (void)state;
    assert_true(sys.stopped);
    for (int i = 0; i < procs_max; i++) {
        size_t size = 0;
        char *data = file_read(procs(i)->log_path, &size);
        if (size == 0 || data[size - 1] != '\n')
            fail_msg("%s is empty or does not end with a newline", procs(i)->log_path);
        if (strlen(data) != size)
            fail_msg("%s holds a NUL byte", procs(i)->log_path);
        size_t lines = 0;
        char *start = data;
        for (char *end = strchr(start, '\n'); end != NULL; end = strchr(start, '\n')) {
            *end = '\0';
            check_line(i, start, ++lines);
            start = end + 1;
        }
        /* a process that logged little cannot pass for one that logged */
        if (lines < 3)
            fail_msg("%s has only %zu lines", procs(i)->log_path, lines);
        printf("%-14s %5zu lines, all JSON\n", system_process_name(i), lines);
        free(data);
    }
}

static bool access_line(json_t *line, const void *arg)
{
    const about_t *a = arg; /* service: route, method: HTTP method */
    json_t *fields = json_object_get(line, "fields");
    const char *rid = str_of(line, "request_id");
    const char *route = str_of(fields, "route"), *method = str_of(fields, "method");
    return rid != NULL && strcmp(rid, a->rid) == 0 && route != NULL &&
           strcmp(route, a->service) == 0 && method != NULL && strcmp(method, a->method) == 0;
}

static bool access_line_status(json_t *line, const void *arg)
{
    if (!access_line(line, arg))
        return false;
    const about_t *a = arg;
    json_t *fields = json_object_get(line, "fields");
    return json_integer_value(json_object_get(fields, "status")) == atoi(a->message_part) &&
           json_number_value(json_object_get(fields, "duration_ms")) > 0 &&
           json_is_true(json_object_get(fields, "completed"));
}

static bool odd_path_line(json_t *line, const void *arg)
{
    (void)arg;
    json_t *fields = json_object_get(line, "fields");
    const char *rid = str_of(line, "request_id");
    const char *path = str_of(fields, "path"), *route = str_of(fields, "route");
    return rid != NULL && strcmp(rid, "logs-odd-path") == 0 && path != NULL &&
           strcmp(path, "/v1/\"q\nline\xef\xbf\xbd") == 0 &&
           json_integer_value(json_object_get(fields, "status")) == 404 && route != NULL &&
           strcmp(route, "unmatched") == 0;
}

/* The payment's request id, from the gateway through every service. */
static void test_request_id_followed_through_the_services(void **state)
{
    (void)state;
    assert_true(sys.stopped);
    const char *rid = sys.rid_pay;
    about_t a = {rid, "/v1/payments", "POST", "201"};
    if (count_lines(p_gateway, access_line_status, &a) != 1)
        fail_msg("the gateway has no access line for POST /v1/payments %s with status 201", rid);
    a = (about_t){rid, "payment", "Create", "rpc served"};
    if (count_lines(p_payment, line_about, &a) != 1)
        fail_msg("the payment service has no \"rpc served\" line for Create with %s", rid);
    a = (about_t){rid, "user", "Debit", "rpc served"};
    if (count_lines(p_user, line_about, &a) != 1)
        fail_msg("the user service has no \"rpc served\" line for Debit with %s", rid);
    a = (about_t){rid, "order", "Get", "rpc served"};
    if (count_lines(p_order, line_about, &a) < 1)
        fail_msg("the order service has no \"rpc served\" line for Get with %s", rid);
    a = (about_t){rid, "order", "MarkPaid", "rpc served"};
    if (count_lines(p_order, line_about, &a) != 1)
        fail_msg("the order service has no \"rpc served\" line for MarkPaid with %s", rid);
    /* through the outbox and the event bus: the payment's event */
    a = (about_t){rid, NULL, NULL, sys.payment_id};
    if (count_lines(p_transaction, line_about, &a) < 1)
        fail_msg("the transaction service logged nothing about %s with %s", sys.payment_id, rid);
    if (count_lines(p_notification, line_about, &a) < 1)
        fail_msg("the notification service logged nothing about %s with %s", sys.payment_id, rid);

    /* the other steps' ids stay with their own requests */
    a = (about_t){sys.rid_topup, "user", "TopUp", "rpc served"};
    if (count_lines(p_user, line_about, &a) != 1)
        fail_msg("the user service has no \"rpc served\" line for TopUp with %s", sys.rid_topup);
    a = (about_t){sys.rid_topup, NULL, NULL, NULL};
    if (count_lines(p_payment, line_about, &a) != 0 || count_lines(p_order, line_about, &a) != 0)
        fail_msg("%s shows up in the payment or order service", sys.rid_topup);
    a = (about_t){sys.rid_register, "/v1/users", "POST", "201"};
    if (count_lines(p_gateway, access_line_status, &a) != 1)
        fail_msg("the gateway has no access line for POST /v1/users %s", sys.rid_register);
    a = (about_t){sys.rid_login, "/v1/auth/login", "POST", "200"};
    if (count_lines(p_gateway, access_line_status, &a) != 1)
        fail_msg("the gateway has no access line for POST /v1/auth/login %s", sys.rid_login);
    if (count_lines(p_gateway, odd_path_line, NULL) != 1)
        fail_msg("the gateway has no access line with the odd path, decoded exactly");
}

/* Occurrences of 'needle' in the file at 'path'. */
static long file_count(const char *path, const char *needle)
{
    size_t size = 0;
    char *data = file_read(path, &size);
    long count = 0;
    size_t len = strlen(needle);
    for (char *at = memmem(data, size, needle, len); at != NULL;
         at = memmem(at + 1, size - (size_t)(at + 1 - data), needle, len))
        count++;
    free(data);
    return count;
}

/* No password, secret or token in any log; the user's id and the request
 * ids are there (the search looks at the right files). */
static void test_no_secret_in_any_log(void **state)
{
    (void)state;
    assert_true(sys.stopped);
    const char *signature = strrchr(sys.token, '.') + 1;
    assert_true(strlen(signature) >= 40);
    const char *secrets[] = {password, wrong_password, jwt_secret, sys.token, signature};
    const char *secret_names[] = {"the password", "the wrong password", "PAYGATE_JWT_SECRET",
                                  "the access token", "the token's signature"};
    for (int i = 0; i < procs_max; i++) {
        for (size_t s = 0; s < sizeof secrets / sizeof secrets[0]; s++) {
            long count = file_count(procs(i)->log_path, secrets[s]);
            if (count != 0)
                fail_msg("%s holds %s %ld times", procs(i)->log_path, secret_names[s], count);
        }
    }
    assert_true(file_count(procs(p_user)->log_path, sys.user_id) > 0);
    assert_true(file_count(procs(p_gateway)->log_path, sys.rid_login) > 0);
    assert_true(file_count(procs(p_gateway)->log_path, "logs-query-token") > 0);
    assert_true(file_count(procs(p_user)->log_path, sys.rid_pay) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flow_with_chosen_request_ids),
        cmocka_unit_test(test_processes_stop_cleanly),
        cmocka_unit_test(test_every_line_is_a_json_object),
        cmocka_unit_test(test_request_id_followed_through_the_services),
        cmocka_unit_test(test_no_secret_in_any_log),
    };
    return cmocka_run_group_tests_name("logs", tests, group_setup, group_teardown);
}
