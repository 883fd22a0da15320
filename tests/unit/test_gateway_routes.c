/*
 * Unit tests of the gateway's pure parts: route matching (path templates,
 * 404 vs 405) and RPC status -> HTTP status and error code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "http_status.h"
#include "routes.h"

static const route_t test_routes[] = {
    {.method = "GET", .path = "/v1/orders", .service = "order", .rpc = "List"},
    {.method = "POST", .path = "/v1/orders", .service = "order", .rpc = "Create"},
    {.method = "GET", .path = "/v1/orders/{id}", .service = "order", .rpc = "Get"},
    {.method = "POST", .path = "/v1/orders/{id}/cancel", .service = "order", .rpc = "Cancel"},
    {.method = "POST",
     .path = "/v1/payments/{payment_id}/refunds/{refund_id}",
     .service = "payment",
     .rpc = "Two"},
};
static const size_t test_route_count = sizeof test_routes / sizeof test_routes[0];

static void test_literal_paths_match_by_method(void **state)
{
    (void)state;
    route_match_t m;
    assert_true(routes_match(test_routes, test_route_count, "GET", "/v1/orders", &m));
    assert_string_equal(m.route->rpc, "List");
    assert_int_equal(m.param_count, 0);
    assert_true(routes_match(test_routes, test_route_count, "POST", "/v1/orders", &m));
    assert_string_equal(m.route->rpc, "Create");
}

static void test_parameters_bind_segments(void **state)
{
    (void)state;
    route_match_t m;
    assert_true(routes_match(test_routes, test_route_count, "GET", "/v1/orders/ord_123", &m));
    assert_string_equal(m.route->rpc, "Get");
    assert_int_equal(m.param_count, 1);
    assert_string_equal(m.params[0].name, "id");
    assert_string_equal(m.params[0].value, "ord_123");
    assert_true(routes_match(test_routes, test_route_count, "POST", "/v1/orders/ord_9/cancel", &m));
    assert_string_equal(m.route->rpc, "Cancel");
    assert_true(
        routes_match(test_routes, test_route_count, "POST", "/v1/payments/p1/refunds/r2", &m));
    assert_int_equal(m.param_count, 2);
    assert_string_equal(m.params[0].name, "payment_id");
    assert_string_equal(m.params[1].value, "r2");
}

static void test_method_not_allowed_lists_methods(void **state)
{
    (void)state;
    route_match_t m;
    assert_false(routes_match(test_routes, test_route_count, "DELETE", "/v1/orders", &m));
    assert_true(m.method_not_allowed);
    assert_string_equal(m.allow, "GET, POST");
    assert_false(routes_match(test_routes, test_route_count, "PUT", "/v1/orders/x", &m));
    assert_true(m.method_not_allowed);
    assert_string_equal(m.allow, "GET");
}

static void test_unknown_paths_are_not_found(void **state)
{
    (void)state;
    route_match_t m;
    const char *paths[] = {"/",
                           "/v1",
                           "/v1/orders/",
                           "/v1/orderss",
                           "/v1/orders//cancel",
                           "/v1/orders/a/b",
                           "/v1/orders/a b",
                           "",
                           "v1/orders",
                           "/v1/orders/x/cancel/more"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        assert_false(routes_match(test_routes, test_route_count, "GET", paths[i], &m));
        if (strcmp(paths[i], "/v1/orders/x/cancel/more") != 0)
            assert_false(m.route != NULL);
    }
    /* an empty segment never binds a parameter */
    assert_false(routes_match(test_routes, test_route_count, "POST", "/v1/orders//cancel", &m));
    assert_false(m.method_not_allowed);
}

static void test_long_segments_rejected(void **state)
{
    (void)state;
    char path[400] = "/v1/orders/";
    memset(path + strlen(path), 'a', 200);
    route_match_t m;
    assert_false(routes_match(test_routes, test_route_count, "GET", path, &m));
}

static void test_v1_table_is_consistent(void **state)
{
    (void)state;
    for (size_t i = 0; i < routes_v1_count; i++) {
        const route_t *r = &routes_v1[i];
        assert_non_null(r->request);
        assert_non_null(r->reply);
        assert_true(r->success_status == 200 || r->success_status == 201);
        route_match_t m;
        /* every literal route finds itself */
        if (strchr(r->path, '{') == NULL) {
            assert_true(routes_match(routes_v1, routes_v1_count, r->method, r->path, &m));
            assert_ptr_equal(m.route, r);
        }
    }
}

static void test_http_status_mapping(void **state)
{
    (void)state;
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__INVALID_ARGUMENT, ""), 400);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__UNAUTHENTICATED, NULL), 401);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__FAILED_PRECONDITION, "insufficient_funds"),
                     402);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable"),
                     409);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__PERMISSION_DENIED, ""), 403);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__NOT_FOUND, ""), 404);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__ALREADY_EXISTS, ""), 409);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "message_too_big"),
                     413);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "queue_full"), 429);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__INTERNAL, ""), 500);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__UNAVAILABLE, "no_worker"), 503);
    assert_int_equal(http_status_for(PAYGATE__V1__CODE__DEADLINE_EXCEEDED, ""), 504);
    assert_int_equal(http_status_for((Paygate__V1__Code)99, ""), 500);
    assert_string_equal(http_error_code(PAYGATE__V1__CODE__NOT_FOUND, ""), "not_found");
    assert_string_equal(http_error_code(PAYGATE__V1__CODE__NOT_FOUND, "order_not_found"),
                        "order_not_found");
    assert_string_equal(http_error_code(PAYGATE__V1__CODE__INTERNAL, NULL), "internal_error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_paths_match_by_method),
        cmocka_unit_test(test_parameters_bind_segments),
        cmocka_unit_test(test_method_not_allowed_lists_methods),
        cmocka_unit_test(test_unknown_paths_are_not_found),
        cmocka_unit_test(test_long_segments_rejected),
        cmocka_unit_test(test_v1_table_is_consistent),
        cmocka_unit_test(test_http_status_mapping),
    };
    return cmocka_run_group_tests_name("gateway routes", tests, NULL, NULL);
}
