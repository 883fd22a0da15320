/*
 * test_eventlog_fuzz_regressions: inputs that fuzz/fuzz_eventlog found,
 * kept as unit tests of broker/eventlog.c.
 *
 * The finding: the offset counter wraps. segment_name_parse() accepts any
 * 20-digit name up to UINT64_MAX, so a segment file named
 * "18446744073709551615.log" (a damaged or foreign file in the topic's
 * directory) opens as the active segment with end_offset UINT64_MAX.
 * eventlog_append() then succeeds, gives the record offset UINT64_MAX and
 * wraps end_offset to 0: end is now below start, eventlog_seek() of the
 * record it just acknowledged fails, and the log is inconsistent (the
 * next roll-over would create "00000000000000000000.log" again). The
 * header promises the log "must never abort on bad bytes on disk"; an
 * append must be refused before the offset can overflow.
 *
 * The input is in fuzz/corpus/eventlog/ (regress_offset_wrap).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdbool.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eventlog.h"
#include "log/log.h"

typedef struct {
    char dir[64];
    char log_dir[96];
    eventlog_t *log; /* closed by the teardown, also after a failed assert */
} fixture_t;

static int setup_dir(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/paygate-eventlog-fuzz-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->log_dir, sizeof f->log_dir, "%s/topic", f->dir);
    *state = f;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown_dir(void **state)
{
    fixture_t *f = *state;
    eventlog_close(&f->log);
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* An empty segment named by the largest base: appending must either be
 * refused or give a record that is then found, with end above it. */
static void test_segment_at_largest_base_does_not_wrap(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(mkdir(f->log_dir, 0750), 0);
    char path[160];
    snprintf(path, sizeof path, "%s/18446744073709551615.log", f->log_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0640);
    assert_true(fd >= 0);
    close(fd);

    eventlog_config_t config = {.dir = f->log_dir};
    f->log = eventlog_open(&config);
    if (f->log == NULL)
        return; /* refusing to open such a directory is a fix too */
    assert_true(eventlog_start_offset(f->log) <= eventlog_end_offset(f->log));

    uint64_t offset = 0;
    if (eventlog_append(f->log, "evt-1", "key", "payload", 7, 1000, &offset) == 0) {
        assert_int_equal(eventlog_sync(f->log), 0);
        assert_true(eventlog_end_offset(f->log) > offset); /* no wrap */
        eventlog_position_t position;
        assert_int_equal(eventlog_seek(f->log, offset, &position), 0);
        eventlog_entry_t entry;
        assert_int_equal(eventlog_read(f->log, position, &entry), 1);
        bool same = entry.offset == offset;
        eventlog_entry_clear(&entry);
        assert_true(same);
    }
    assert_true(eventlog_start_offset(f->log) <= eventlog_end_offset(f->log));
}

int main(void)
{
    log_init("test_eventlog_fuzz_regressions"); /* PAYGATE_LOG_LEVEL=error under ctest */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_segment_at_largest_base_does_not_wrap, setup_dir,
                                        teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
