/*
 * test_config: unit tests of the small building blocks under lib/:
 *
 *   - config: strict integer and string settings from the environment
 *     (junk, signs, spaces, overflow and range are errors, never clamped);
 *   - arena: the per-call bump allocator (alignment, zeroing, big
 *     allocations, reset, the size limit);
 *   - list: the intrusive doubly linked list.
 *
 * The environment tests set and unset variables named PAYGATE_TEST_*; they
 * do not depend on anything in the caller's environment.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arena/arena.h"
#include "config/config.h"
#include "list/list.h"
#include "log/log.h"

/* ---- config_parse_int ------------------------------------------------------ */

/* Parses 'text' in [min, max] and asserts it gives 'expected'. */
static void expect_int(const char *text, int64_t min, int64_t max, int64_t expected)
{
    int64_t out = expected ^ 0x5a5a; /* anything else */
    if (!config_parse_int(text, min, max, &out))
        fail_msg("config_parse_int(\"%s\") refused", text);
    assert_int_equal(out, expected);
}

/* Asserts 'text' is refused in [min, max], leaving '*out' alone. */
static void expect_refused(const char *text, int64_t min, int64_t max)
{
    int64_t out = 1234567;
    if (config_parse_int(text, min, max, &out))
        fail_msg("config_parse_int(\"%s\") accepted as %lld", text ? text : "(null)",
                 (long long)out);
    assert_int_equal(out, 1234567);
}

static void test_parse_int_valid(void **state)
{
    (void)state;
    expect_int("0", 0, 10, 0);
    expect_int("10", 0, 10, 10);
    expect_int("7", 0, 10, 7);
    expect_int("007", 0, 10, 7); /* leading zeros are still decimal */
    expect_int("-5", -10, 10, -5);
    expect_int("-0", 0, 10, 0);
    expect_int("9223372036854775807", INT64_MIN, INT64_MAX, INT64_MAX);
    expect_int("-9223372036854775808", INT64_MIN, INT64_MAX, INT64_MIN);
    expect_int("65535", 1, 65535, 65535);
}

static void test_parse_int_junk(void **state)
{
    (void)state;
    static const char *const junk[] = {
        "",    " ",   " 1",  "1 ",   "\t1",   "1\n", "+1",    "++1",   "--1",      "-",   "- 1",
        "-+1", "1.0", "1e3", "0x10", "10abc", "abc", "1_000", "1,000", "\xd9\xa1", "0b1", "1 2",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        expect_refused(junk[i], INT64_MIN, INT64_MAX);
    expect_refused(NULL, INT64_MIN, INT64_MAX);
}

static void test_parse_int_overflow(void **state)
{
    (void)state;
    expect_refused("9223372036854775808", INT64_MIN, INT64_MAX);
    expect_refused("-9223372036854775809", INT64_MIN, INT64_MAX);
    expect_refused("99999999999999999999999999", INT64_MIN, INT64_MAX);
    expect_refused("-99999999999999999999999999", INT64_MIN, INT64_MAX);
}

static void test_parse_int_bounds(void **state)
{
    (void)state;
    expect_refused("11", 0, 10);
    expect_refused("-1", 0, 10); /* negative below a zero minimum */
    expect_refused("-11", -10, 10);
    expect_refused("0", 1, 65535);
    expect_refused("65536", 1, 65535);
    expect_refused("4294967296", 0, UINT32_MAX);
    expect_int("4294967295", 0, UINT32_MAX, UINT32_MAX);
    expect_int("5", 5, 5, 5); /* a range of one */
    expect_refused("4", 5, 5);
    expect_refused("6", 5, 5);
}

/* ---- config_int and config_str --------------------------------------------- */

static int env_teardown(void **state)
{
    (void)state;
    unsetenv("PAYGATE_TEST_INT");
    unsetenv("PAYGATE_TEST_STR");
    return 0;
}

static void test_config_int_env(void **state)
{
    (void)state;
    int64_t out = 0;
    unsetenv("PAYGATE_TEST_INT");
    assert_true(config_int("PAYGATE_TEST_INT", 250, 1, 1000, &out));
    assert_int_equal(out, 250); /* unset: the fallback */

    setenv("PAYGATE_TEST_INT", "", 1);
    out = 0;
    assert_true(config_int("PAYGATE_TEST_INT", 250, 1, 1000, &out));
    assert_int_equal(out, 250); /* empty: the fallback */

    setenv("PAYGATE_TEST_INT", "1000", 1);
    assert_true(config_int("PAYGATE_TEST_INT", 250, 1, 1000, &out));
    assert_int_equal(out, 1000);

    setenv("PAYGATE_TEST_INT", "-3", 1);
    assert_true(config_int("PAYGATE_TEST_INT", 0, -10, 10, &out));
    assert_int_equal(out, -3);

    /* Errors are errors: never clamped, never the fallback. */
    static const char *const bad[] = {
        "1001", "0", " 5", "5 ", "+5", "5ms", "1e2", "huge", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("PAYGATE_TEST_INT", bad[i], 1);
        if (config_int("PAYGATE_TEST_INT", 250, 1, 1000, &out))
            fail_msg("PAYGATE_TEST_INT='%s' accepted as %lld", bad[i], (long long)out);
    }
}

static void test_config_str_env(void **state)
{
    (void)state;
    const char *out = NULL;
    unsetenv("PAYGATE_TEST_STR");
    assert_true(config_str("PAYGATE_TEST_STR", "tcp://127.0.0.1:5555", 64, &out));
    assert_string_equal(out, "tcp://127.0.0.1:5555");

    setenv("PAYGATE_TEST_STR", "", 1);
    out = NULL;
    assert_true(config_str("PAYGATE_TEST_STR", "fallback", 64, &out));
    assert_string_equal(out, "fallback");

    setenv("PAYGATE_TEST_STR", "tcp://10.0.0.1:7000", 1);
    assert_true(config_str("PAYGATE_TEST_STR", "fallback", 64, &out));
    assert_string_equal(out, "tcp://10.0.0.1:7000");
    assert_ptr_equal(out, getenv("PAYGATE_TEST_STR")); /* points into the environment */

    /* Length: exactly the maximum is fine, one more is refused. */
    char text[66];
    memset(text, 'x', 65);
    text[65] = '\0';
    setenv("PAYGATE_TEST_STR", text, 1);
    out = "untouched";
    assert_false(config_str("PAYGATE_TEST_STR", "fallback", 64, &out));
    assert_true(config_str("PAYGATE_TEST_STR", "fallback", 65, &out));
    assert_int_equal(strlen(out), 65);

    /* Spaces are kept: strings are taken as they are. */
    setenv("PAYGATE_TEST_STR", " a b ", 1);
    assert_true(config_str("PAYGATE_TEST_STR", "fallback", 64, &out));
    assert_string_equal(out, " a b ");
}

/* ---- arena ----------------------------------------------------------------- */

static void test_arena_alignment_and_zeroing(void **state)
{
    (void)state;
    arena_t *arena = arena_new(4096);
    assert_non_null(arena);
    static const size_t sizes[] = {1, 3, 15, 16, 17, 31, 100, 7, 1, 255, 2};
    unsigned char *previous = NULL;
    size_t previous_size = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = arena_alloc(arena, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        for (size_t k = 0; k < sizes[i]; k++)
            assert_int_equal(p[k], 0);
        /* No overlap with the previous allocation. */
        if (previous != NULL)
            assert_true(p >= previous + previous_size || p + sizes[i] <= previous);
        memset(p, 0xab, sizes[i]);
        previous = p;
        previous_size = sizes[i];
    }
    arena_destroy(&arena);
    assert_null(arena);
    arena_destroy(&arena); /* twice is safe */
}

static void test_arena_many_small_allocations_span_blocks(void **state)
{
    (void)state;
    arena_t *arena = arena_new(0); /* the minimum block size applies */
    assert_non_null(arena);
    enum { count = 1000 };
    uint32_t *values[count];
    for (uint32_t i = 0; i < count; i++) {
        values[i] = arena_alloc(arena, sizeof *values[i]);
        assert_non_null(values[i]);
        assert_int_equal((uintptr_t)values[i] % 16, 0);
        *values[i] = i * 2654435761u;
    }
    for (uint32_t i = 0; i < count; i++) /* nothing overwrote anything */
        assert_int_equal(*values[i], i * 2654435761u);
    arena_destroy(&arena);
}

static void test_arena_big_allocation(void **state)
{
    (void)state;
    arena_t *arena = arena_new(1024);
    assert_non_null(arena);
    char *small = arena_alloc(arena, 10);
    assert_non_null(small);
    memcpy(small, "before", 7);
    size_t big_size = 1024 * 1024; /* far over the block size */
    unsigned char *big = arena_alloc(arena, big_size);
    assert_non_null(big);
    assert_int_equal((uintptr_t)big % 16, 0);
    assert_int_equal(big[0], 0);
    assert_int_equal(big[big_size - 1], 0);
    memset(big, 0xcd, big_size);
    char *after = arena_alloc(arena, 10);
    assert_non_null(after);
    assert_string_equal(small, "before"); /* earlier memory is intact */
    assert_int_equal(big[big_size - 1], 0xcd);
    arena_destroy(&arena);
}

static void test_arena_limit(void **state)
{
    (void)state;
    arena_t *arena = arena_new(1024);
    assert_non_null(arena);
    assert_null(arena_alloc(arena, (size_t)arena_bytes_max + 1));
    assert_null(arena_alloc(arena, SIZE_MAX));     /* rounding up overflows */
    assert_null(arena_alloc(arena, SIZE_MAX - 8)); /* so does this */
    void *half = arena_alloc(arena, arena_bytes_max / 2);
    assert_non_null(half);
    assert_null(arena_alloc(arena, arena_bytes_max / 2 + 4096)); /* over in total */
    assert_non_null(arena_alloc(arena, 64));                     /* small still fits */
    arena_reset(arena);
    /* After a reset only the first block is kept, and reused: the same
     * big allocation fits again without growing. */
    unsigned char *again = arena_alloc(arena, arena_bytes_max / 2);
    assert_ptr_equal(again, half);
    assert_int_equal(again[arena_bytes_max / 2 - 1], 0);
    assert_null(arena_alloc(arena, arena_bytes_max / 2 + 4096)); /* still over in total */
    arena_destroy(&arena);
}

/* arena_alloc must return NULL for any size over the arena's limit, also
 * once the arena holds a block. Run in a child process: a wrong answer here
 * corrupts the heap (the child dies, the test fails, the others still run). */
static void test_arena_huge_size_after_first_block(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        arena_t *arena = arena_new(1024);
        if (arena == NULL || arena_alloc(arena, 16) == NULL)
            _exit(2);
        /* Rounded to 16 this is still SIZE_MAX - 31: no overflow in the
         * rounding, but total_bytes + size wraps around. */
        void *p = arena_alloc(arena, SIZE_MAX - 31);
        _exit(p == NULL ? 0 : 3);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("arena_alloc(SIZE_MAX - 31) with a block in use crashed the process "
                 "(signal %d)",
                 WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    if (WEXITSTATUS(status) == 3)
        fail_msg("arena_alloc(SIZE_MAX - 31) with a block in use returned non-NULL");
    if (WEXITSTATUS(status) != 0)
        fail_msg("arena_alloc(SIZE_MAX - 31) with a block in use failed in the child "
                 "(exit %d; with ASan: see the heap-buffer-overflow report above)",
                 WEXITSTATUS(status));
}

static void test_arena_reset_keeps_working(void **state)
{
    (void)state;
    arena_t *arena = arena_new(1024);
    assert_non_null(arena);
    /* Round 1: several blocks. */
    unsigned char *first = arena_alloc(arena, 100);
    assert_non_null(first);
    for (int i = 0; i < 50; i++) {
        unsigned char *p = arena_alloc(arena, 200);
        assert_non_null(p);
        memset(p, 0xee, 200);
    }
    memset(first, 0xee, 100);
    for (int round = 0; round < 5; round++) {
        arena_reset(arena);
        /* Memory handed out again is zeroed, whatever it held. */
        unsigned char *p = arena_alloc(arena, 100);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        for (int k = 0; k < 100; k++)
            assert_int_equal(p[k], 0);
        for (int i = 0; i < 50; i++) {
            unsigned char *q = arena_alloc(arena, 200);
            assert_non_null(q);
            for (int k = 0; k < 200; k++)
                assert_int_equal(q[k], 0);
            memset(q, 0xee, 200);
        }
        memset(p, 0xee, 100);
    }
    arena_destroy(&arena);

    /* Reset of an arena that never allocated. */
    arena = arena_new(1024);
    arena_reset(arena);
    assert_non_null(arena_alloc(arena, 8));
    arena_destroy(&arena);
}

static void test_arena_strdup(void **state)
{
    (void)state;
    arena_t *arena = arena_new(1024);
    assert_non_null(arena);
    const char *text = "pay_01HZX";
    char *copy = arena_strdup(arena, text);
    assert_non_null(copy);
    assert_ptr_not_equal(copy, text);
    assert_string_equal(copy, text);
    char *empty = arena_strdup(arena, "");
    assert_non_null(empty);
    assert_string_equal(empty, "");
    char *long_text = malloc(5000);
    assert_non_null(long_text);
    memset(long_text, 'L', 4999);
    long_text[4999] = '\0';
    char *long_copy = arena_strdup(arena, long_text); /* over the block size */
    assert_non_null(long_copy);
    assert_string_equal(long_copy, long_text);
    free(long_text);
    assert_string_equal(copy, "pay_01HZX");
    arena_destroy(&arena);
}

static void test_arena_protobuf_allocator(void **state)
{
    (void)state;
    arena_t *arena = arena_new(1024);
    assert_non_null(arena);
    ProtobufCAllocator allocator = arena_protobuf_allocator(arena);
    void *p = allocator.alloc(allocator.allocator_data, 40);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    allocator.free(allocator.allocator_data, p); /* a no-op, must not crash */
    arena_destroy(&arena);
}

/* ---- list ------------------------------------------------------------------ */

typedef struct {
    int value;
    list_node_t link;
} item_t;

/* The values on 'head', front to back, into 'out'; returns the count and
 * checks that the back links agree with the forward ones. */
static size_t list_values(const list_node_t *head, int *out, size_t out_max)
{
    size_t n = 0;
    const list_node_t *prev = head;
    for (const list_node_t *node = head->next; node != head; node = node->next) {
        assert_ptr_equal(node->prev, prev);
        assert_true(n < out_max);
        out[n++] = list_entry(node, item_t, link)->value;
        prev = node;
    }
    assert_ptr_equal(head->prev, prev);
    return n;
}

static void test_list_basic_operations(void **state)
{
    (void)state;
    list_node_t head;
    list_init(&head);
    assert_true(list_empty(&head));
    assert_null(list_front(&head));

    item_t items[4] = {{.value = 1}, {.value = 2}, {.value = 3}, {.value = 4}};
    for (int i = 0; i < 4; i++) {
        list_init(&items[i].link);
        assert_false(list_linked(&items[i].link));
    }
    list_push_back(&head, &items[1].link);  /* 2 */
    list_push_back(&head, &items[2].link);  /* 2 3 */
    list_push_front(&head, &items[0].link); /* 1 2 3 */
    list_push_back(&head, &items[3].link);  /* 1 2 3 4 */
    assert_false(list_empty(&head));
    for (int i = 0; i < 4; i++)
        assert_true(list_linked(&items[i].link));
    int values[8];
    assert_int_equal(list_values(&head, values, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(values[i], i + 1);
    assert_ptr_equal(list_entry(list_front(&head), item_t, link), &items[0]);

    list_remove(&items[1].link); /* middle */
    assert_false(list_linked(&items[1].link));
    list_remove(&items[1].link); /* again: safe, no effect */
    assert_int_equal(list_values(&head, values, 8), 3);
    assert_int_equal(values[0], 1);
    assert_int_equal(values[1], 3);
    assert_int_equal(values[2], 4);

    list_remove(&items[0].link); /* front */
    assert_ptr_equal(list_entry(list_front(&head), item_t, link), &items[2]);
    list_remove(&items[3].link); /* back */
    assert_int_equal(list_values(&head, values, 8), 1);
    assert_int_equal(values[0], 3);
    list_remove(&items[2].link);
    assert_true(list_empty(&head));
    assert_null(list_front(&head));

    /* Moving a node from one list to another. */
    list_node_t other;
    list_init(&other);
    list_push_back(&head, &items[0].link);
    list_push_back(&head, &items[1].link);
    list_remove(&items[0].link);
    list_push_back(&other, &items[0].link);
    assert_int_equal(list_values(&head, values, 8), 1);
    assert_int_equal(values[0], 2);
    assert_int_equal(list_values(&other, values, 8), 1);
    assert_int_equal(values[0], 1);
}

/* A list used as a FIFO queue, the way the registry queues requests. */
static void test_list_as_fifo(void **state)
{
    (void)state;
    enum { count = 100 };
    item_t items[count];
    list_node_t queue;
    list_init(&queue);
    for (int i = 0; i < count; i++) {
        items[i].value = i;
        list_init(&items[i].link);
        list_push_back(&queue, &items[i].link);
    }
    for (int i = 0; i < count; i++) {
        list_node_t *front = list_front(&queue);
        assert_non_null(front);
        assert_int_equal(list_entry(front, item_t, link)->value, i);
        list_remove(front);
    }
    assert_true(list_empty(&queue));
}

int main(void)
{
    setenv("PAYGATE_LOG_LEVEL", "error", 0);
    log_init("test_config");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_int_valid),
        cmocka_unit_test(test_parse_int_junk),
        cmocka_unit_test(test_parse_int_overflow),
        cmocka_unit_test(test_parse_int_bounds),
        cmocka_unit_test_teardown(test_config_int_env, env_teardown),
        cmocka_unit_test_teardown(test_config_str_env, env_teardown),
        cmocka_unit_test(test_arena_alignment_and_zeroing),
        cmocka_unit_test(test_arena_many_small_allocations_span_blocks),
        cmocka_unit_test(test_arena_big_allocation),
        cmocka_unit_test(test_arena_limit),
        cmocka_unit_test(test_arena_huge_size_after_first_block),
        cmocka_unit_test(test_arena_reset_keeps_working),
        cmocka_unit_test(test_arena_strdup),
        cmocka_unit_test(test_arena_protobuf_allocator),
        cmocka_unit_test(test_list_basic_operations),
        cmocka_unit_test(test_list_as_fifo),
    };
    return cmocka_run_group_tests_name("config_arena_list", tests, NULL, NULL);
}
