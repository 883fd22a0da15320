/*
 * test_eventlog: unit tests of broker/eventlog, the broker's durable topic
 * log, on real files.
 *
 * Each test gets a fresh directory under /tmp (removed afterwards) and
 * opens logs in it. Records are made by append_record(): the event id and
 * key encode the record's offset and payload length, and the payload is a
 * pattern derived from the offset, so expect_record() can check any record
 * read back without remembering what was written. Corruption is made by
 * hand with pread/pwrite/truncate on the segment files, at positions the
 * log itself reports (eventlog_seek) or the format defines (see the
 * diagram in broker/eventlog.c): a record's header is 32 bytes, then the
 * event id, the key and the payload.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eventlog.h"
#include "log/log.h"

enum {
    header_bytes = 32,
    id_bytes = 10,            /* "evt-000042" */
    key_bytes = 12,           /* "k000042-0076" */
    fixed_payload_bytes = 76, /* makes a 130-byte record */
    fixed_record_bytes = header_bytes + id_bytes + key_bytes + fixed_payload_bytes,
    four_records_bytes = 4 * fixed_record_bytes, /* a small segment: 4 records */
    timestamp_base_ms = 1000000,
};

/* ---- fixture: a fresh directory per test ------------------------------------ */

typedef struct {
    char dir[64];
    char path[256]; /* scratch for segment_path() */
} fixture_t;

static int setup_dir(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/paygate-eventlog-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
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
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- helpers ---------------------------------------------------------------- */

static eventlog_t *open_log(const char *dir, uint64_t segment_bytes_max, int64_t retention_ms,
                            uint64_t retention_bytes)
{
    eventlog_config_t config = {.dir = dir,
                                .segment_bytes_max = segment_bytes_max,
                                .retention_ms = retention_ms,
                                .retention_bytes = retention_bytes};
    eventlog_t *log = eventlog_open(&config);
    assert_non_null(log);
    return log;
}

static uint8_t payload_byte(uint64_t offset, size_t i)
{
    return (uint8_t)(offset * 131 + i * 7 + 3);
}

/* Appends the record for the next offset, with 'payload_len' bytes of
 * payload and time 'timestamp_ms'; asserts the offset it got. */
static uint64_t append_record(eventlog_t *log, size_t payload_len, int64_t timestamp_ms)
{
    uint64_t expected = eventlog_end_offset(log);
    char id[32], key[32];
    snprintf(id, sizeof id, "evt-%06" PRIu64, expected);
    snprintf(key, sizeof key, "k%06" PRIu64 "-%04zu", expected, payload_len);
    uint8_t *payload = malloc(payload_len + 1);
    assert_non_null(payload);
    for (size_t i = 0; i < payload_len; i++)
        payload[i] = payload_byte(expected, i);
    uint64_t offset = UINT64_MAX;
    assert_int_equal(eventlog_append(log, id, key, payload, payload_len, timestamp_ms, &offset), 0);
    free(payload);
    assert_int_equal(offset, expected);
    assert_int_equal(eventlog_end_offset(log), expected + 1);
    return offset;
}

/* Appends 'n' fixed-size (130-byte) records, timestamps base + 1 s each. */
static void append_fixed(eventlog_t *log, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t offset = eventlog_end_offset(log);
        append_record(log, fixed_payload_bytes, timestamp_base_ms + (int64_t)offset * 1000);
    }
}

/* Asserts 'e' is the record append_record() made for 'offset'. */
static void expect_record(const eventlog_entry_t *e, uint64_t offset)
{
    assert_int_equal(e->offset, offset);
    char id[32];
    snprintf(id, sizeof id, "evt-%06" PRIu64, offset);
    assert_string_equal(e->event_id, id);
    uint64_t key_offset = 0;
    size_t key_len = 0;
    assert_int_equal(sscanf(e->key, "k%06" SCNu64 "-%04zu", &key_offset, &key_len), 2);
    assert_int_equal(key_offset, offset);
    assert_int_equal(e->payload_len, key_len);
    for (size_t i = 0; i < e->payload_len; i++)
        if (e->payload[i] != payload_byte(offset, i))
            fail_msg("offset %" PRIu64 ": payload byte %zu differs", offset, i);
}

/* Reads with eventlog_seek('from') and next_position and asserts it finds
 * the records from..to-1, in order; when 'to' is the durable end, asserts
 * the log ends there. */
static void expect_records(eventlog_t *log, uint64_t from, uint64_t to)
{
    assert_true(from < to);
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, from, &pos), 0);
    for (uint64_t offset = from; offset < to; offset++) {
        eventlog_entry_t e;
        int rc = eventlog_read(log, pos, &e);
        if (rc != 1)
            fail_msg("reading offset %" PRIu64 ": %d", offset, rc);
        expect_record(&e, offset);
        assert_int_equal(e.position.segment_base, pos.segment_base);
        assert_int_equal(e.position.file_offset, pos.file_offset);
        pos = e.next_position;
        eventlog_entry_clear(&e);
    }
    if (to == eventlog_durable_end_offset(log)) {
        eventlog_entry_t e;
        assert_int_equal(eventlog_read(log, pos, &e), 0);
        assert_null(e.payload);
    }
}

static const char *segment_path(fixture_t *f, uint64_t base)
{
    snprintf(f->path, sizeof f->path, "%s/%020" PRIu64 ".log", f->dir, base);
    return f->path;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The bases of the segment files in 'dir', sorted; returns how many. */
static size_t list_segments(const char *dir, uint64_t *bases, size_t max)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len != 24 || strcmp(e->d_name + 20, ".log") != 0)
            continue;
        assert_true(n < max);
        bases[n++] = strtoull(e->d_name, NULL, 10);
    }
    closedir(d);
    qsort(bases, n, sizeof *bases, compare_u64);
    return n;
}

static void write_at(const char *path, uint64_t pos, const void *bytes, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, bytes, len, (off_t)pos), (ssize_t)len);
    close(fd);
}

/* Flips every bit of the byte at 'pos' of 'path'. */
static void flip_byte(const char *path, uint64_t pos)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b = 0;
    assert_int_equal(pread(fd, &b, 1, (off_t)pos), 1);
    b = (uint8_t)~b;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)pos), 1);
    close(fd);
}

/* ---- CRC-32C ---------------------------------------------------------------- */

static void test_crc32c_check_value(void **state)
{
    (void)state;
    assert_int_equal(eventlog_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(eventlog_crc32c(0, "", 0), 0);
    /* continuing from a crc equals one pass over the whole */
    uint32_t part = eventlog_crc32c(0, "1234", 4);
    assert_int_equal(eventlog_crc32c(part, "56789", 5), 0xE3069283u);
    /* 32 zero bytes: the iSCSI (RFC 3720) test vector */
    uint8_t zeros[32] = {0};
    assert_int_equal(eventlog_crc32c(0, zeros, sizeof zeros), 0x8A9136AAu);
}

/* ---- append and read -------------------------------------------------------- */

static void test_append_sync_read_back_in_order(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_start_offset(log), 0);
    assert_int_equal(eventlog_end_offset(log), 0);
    assert_true(file_exists(segment_path(f, 0)));
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < 200; i++) {
        size_t len = (size_t)(i * 37 % 700); /* 0 .. 699, including empty payloads */
        append_record(log, len, timestamp_base_ms + (int64_t)i);
        bytes += header_bytes + id_bytes + key_bytes + len;
    }
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(eventlog_bytes(log), bytes);
    /* open, the active segment is preallocated ahead of its records */
    assert_true(file_size(segment_path(f, 0)) >= bytes);
    expect_records(log, 0, 200);

    /* timestamps and positions come back too */
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, 123, &pos), 0);
    eventlog_entry_t e;
    assert_int_equal(eventlog_read(log, pos, &e), 1);
    assert_int_equal(e.timestamp_ms, timestamp_base_ms + 123);
    assert_int_equal(e.next_position.file_offset,
                     pos.file_offset + header_bytes + id_bytes + key_bytes + e.payload_len);
    eventlog_entry_clear(&e);
    assert_null(e.payload);

    /* out of range */
    assert_int_equal(eventlog_seek(log, 200, &pos), -1);
    assert_int_equal(eventlog_seek(log, UINT64_MAX, &pos), -1);
    eventlog_close(&log);
    assert_null(log);
    /* closed, it is exactly its records */
    assert_int_equal(file_size(segment_path(f, 0)), bytes);
}

/* The bytes on disk follow the documented layout. */
static void test_record_layout_on_disk(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    uint64_t offset = 0;
    assert_int_equal(eventlog_append(log, "e1", "k", "xyz", 3, -5, &offset), 0);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    uint8_t r[header_bytes + 6];
    assert_int_equal(file_size(segment_path(f, 0)), sizeof r);
    int fd = open(segment_path(f, 0), O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, r, sizeof r, 0), (ssize_t)sizeof r);
    close(fd);
    const uint8_t expected_after_crc[] = {
        0,    0,    0,    0,    0,    0,    0,    0,    /* offset 0 */
        0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* timestamp -5 */
        2,    0,    1,    0,    3,    0,    0,    0,    /* lengths 2, 1, 3 */
        'e',  '1',  'k',  'x',  'y',  'z'};
    assert_memory_equal(r + 8, expected_after_crc, sizeof expected_after_crc);
    uint32_t length = (uint32_t)(r[0] | r[1] << 8 | r[2] << 16 | (uint32_t)r[3] << 24);
    uint32_t crc = (uint32_t)(r[4] | r[5] << 8 | r[6] << 16 | (uint32_t)r[7] << 24);
    assert_int_equal(length, sizeof r - 8);
    assert_int_equal(crc, eventlog_crc32c(0, r + 8, sizeof r - 8));
}

static void test_offsets_dense_across_reopen(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    for (int i = 0; i < 5; i++)
        append_record(log, 10, timestamp_base_ms);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_start_offset(log), 0);
    assert_int_equal(eventlog_end_offset(log), 5);
    assert_int_equal(eventlog_durable_end_offset(log), 5);
    for (int i = 0; i < 5; i++)
        append_record(log, 20, timestamp_base_ms); /* asserts offsets 5..9 */
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), 10);
    expect_records(log, 0, 10);
    expect_records(log, 7, 10);
    eventlog_close(&log);
}

/* Appended but not yet synced records are not served. */
static void test_read_serves_durable_records_only(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_record(log, 10, timestamp_base_ms);
    assert_int_equal(eventlog_end_offset(log), 1);
    assert_int_equal(eventlog_durable_end_offset(log), 0);
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, 0, &pos), 0);
    eventlog_entry_t e;
    assert_int_equal(eventlog_read(log, pos, &e), 0);
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(eventlog_durable_end_offset(log), 1);
    assert_int_equal(eventlog_read(log, pos, &e), 1);
    expect_record(&e, 0);
    eventlog_entry_clear(&e);
    eventlog_close(&log);
}

/* While open, the active segment is preallocated (zeros after its
 * records); a crash leaves those zeros, after a torn record or not:
 * reopening cuts them off, and a closed log is exactly its records. */
static void test_preallocated_tail_is_cut_off(void **state)
{
    fixture_t *f = *state;
    const uint64_t n = 10;
    const char *path = segment_path(f, 0);
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_fixed(log, n);
    assert_int_equal(eventlog_sync(log), 0);
    assert_true(file_size(path) > n * fixed_record_bytes);
    eventlog_close(&log);
    assert_int_equal(file_size(path), n * fixed_record_bytes);

    /* the records, then zeros to the end of a preallocated chunk */
    assert_int_equal(truncate(path, (off_t)(n * fixed_record_bytes + (1 << 20))), 0);
    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n);
    assert_int_equal(eventlog_bytes(log), n * fixed_record_bytes);
    assert_int_equal(file_size(path), n * fixed_record_bytes);
    expect_records(log, 0, n);
    assert_int_equal(append_record(log, 33, timestamp_base_ms), n);
    assert_int_equal(eventlog_sync(log), 0);
    expect_records(log, 0, n + 1);
    eventlog_close(&log);
    uint64_t last_at = n * fixed_record_bytes;
    uint64_t last_bytes = header_bytes + id_bytes + key_bytes + 33;
    assert_int_equal(file_size(path), last_at + last_bytes);

    /* half of the last record written, then zeros */
    assert_int_equal(truncate(path, (off_t)(last_at + last_bytes / 2)), 0);
    assert_int_equal(truncate(path, (off_t)(last_at + last_bytes / 2 + 4096)), 0);
    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n);
    assert_int_equal(eventlog_bytes(log), last_at);
    assert_int_equal(file_size(path), last_at);
    expect_records(log, 0, n);
    eventlog_close(&log);
}

/* ---- segments --------------------------------------------------------------- */

static void test_segment_roll_over_and_reads_across_segments(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, four_records_bytes, 0, 0);
    append_fixed(log, 30);
    assert_int_equal(eventlog_sync(log), 0);

    uint64_t bases[64];
    size_t n = list_segments(f->dir, bases, 64);
    assert_int_equal(n, 8); /* 4 records each: 0, 4, ..., 28 */
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(bases[i], 4 * i);
        uint64_t size = file_size(segment_path(f, bases[i]));
        assert_true(size <= four_records_bytes);
        assert_int_equal(size % fixed_record_bytes, 0); /* never a split record */
    }
    assert_int_equal(eventlog_bytes(log), 30 * fixed_record_bytes);
    expect_records(log, 0, 30);

    /* into the middle of the 3rd segment */
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, bases[2] + 2, &pos), 0);
    assert_int_equal(pos.segment_base, bases[2]);
    assert_int_equal(pos.file_offset, 2 * fixed_record_bytes);
    expect_records(log, bases[2] + 2, 30);

    /* a record bigger than a segment gets a segment of its own */
    uint64_t big = append_record(log, 1000, timestamp_base_ms);
    append_fixed(log, 1);
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(file_size(segment_path(f, big)), header_bytes + id_bytes + key_bytes + 1000);
    assert_true(file_exists(segment_path(f, big + 1)));
    expect_records(log, 26, big + 2);
    eventlog_close(&log);

    /* the same after a reopen, where older segments are not scanned */
    log = open_log(f->dir, four_records_bytes, 0, 0);
    assert_int_equal(eventlog_end_offset(log), big + 2);
    for (uint64_t from = 0; from < big + 2; from += 3)
        expect_records(log, from, big + 2);
    eventlog_close(&log);
}

/* Seeks land right within big segments (sparse index), also in a segment
 * that was closed before the log was reopened (index built by scanning). */
static void test_seek_in_large_segments(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    for (int i = 0; i < 5000; i++)
        append_record(log, (size_t)(i % 13), timestamp_base_ms);
    assert_int_equal(eventlog_sync(log), 0);
    const uint64_t probes[] = {4999, 0, 1024, 1023, 1025, 3000, 2048, 4096, 17, 4998};
    for (size_t i = 0; i < sizeof probes / sizeof *probes; i++) {
        eventlog_position_t pos;
        assert_int_equal(eventlog_seek(log, probes[i], &pos), 0);
        eventlog_entry_t e;
        assert_int_equal(eventlog_read(log, pos, &e), 1);
        expect_record(&e, probes[i]);
        eventlog_entry_clear(&e);
    }
    eventlog_close(&log);

    /* reopen with small segments: the next append rolls over, and the
     * 5000-record segment becomes an older one */
    log = open_log(f->dir, 4096, 0, 0);
    append_record(log, 10, timestamp_base_ms);
    assert_int_equal(eventlog_sync(log), 0);
    uint64_t bases[4];
    assert_int_equal(list_segments(f->dir, bases, 4), 2);
    assert_int_equal(bases[1], 5000);
    eventlog_close(&log);
    log = open_log(f->dir, 4096, 0, 0);
    for (size_t i = 0; i < sizeof probes / sizeof *probes; i++) {
        eventlog_position_t pos;
        assert_int_equal(eventlog_seek(log, probes[i], &pos), 0);
        assert_int_equal(pos.segment_base, 0);
        eventlog_entry_t e;
        assert_int_equal(eventlog_read(log, pos, &e), 1);
        expect_record(&e, probes[i]);
        eventlog_entry_clear(&e);
    }
    expect_records(log, 4990, 5001);
    eventlog_close(&log);
}

/* ---- recovery --------------------------------------------------------------- */

/* A crash in the middle of writing the last record: reopening cuts it off. */
static void test_torn_half_record_is_cut_off(void **state)
{
    fixture_t *f = *state;
    const uint64_t n = 10;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_fixed(log, n);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    const char *path = segment_path(f, 0);
    uint64_t last_record_at = (n - 1) * fixed_record_bytes;
    assert_int_equal(file_size(path), n * fixed_record_bytes);
    assert_int_equal(truncate(path, (off_t)(last_record_at + fixed_record_bytes / 2)), 0);

    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n - 1);
    assert_int_equal(file_size(path), last_record_at);
    assert_int_equal(eventlog_bytes(log), last_record_at);
    expect_records(log, 0, n - 1);
    /* the offset is given again, to a record that reads back fine */
    assert_int_equal(append_record(log, 33, timestamp_base_ms), n - 1);
    assert_int_equal(eventlog_sync(log), 0);
    expect_records(log, 0, n);
    eventlog_close(&log);

    /* a header cut short (fewer than 32 bytes) too */
    assert_int_equal(truncate(path, (off_t)(file_size(path) - 60)), 0);
    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n - 1);
    assert_int_equal(file_size(path), last_record_at);
    eventlog_close(&log);
}

/* Garbage after the last whole record (a torn write of a next record, or
 * preallocated zeroes): cut off, the records before it kept. */
static void test_garbage_after_last_record_is_cut_off(void **state)
{
    fixture_t *f = *state;
    const uint64_t n = 7;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_fixed(log, n);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    const char *path = segment_path(f, 0);
    uint8_t garbage[300];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(i * 151 + 7);
    write_at(path, n * fixed_record_bytes, garbage, sizeof garbage);
    assert_int_equal(file_size(path), n * fixed_record_bytes + sizeof garbage);

    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n);
    assert_int_equal(file_size(path), n * fixed_record_bytes);
    assert_int_equal(append_record(log, 5, timestamp_base_ms), n);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    /* zeroes (a length of 0) are not a record either */
    uint8_t zeros[100] = {0};
    uint64_t size = file_size(path);
    write_at(path, size, zeros, sizeof zeros);
    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n + 1);
    assert_int_equal(file_size(path), size);
    expect_records(log, 0, n + 1);
    eventlog_close(&log);
}

/* A length field claiming 2 GiB: a torn header, not an allocation. */
static void test_huge_length_is_treated_as_torn(void **state)
{
    fixture_t *f = *state;
    const uint64_t n = 6;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_fixed(log, n);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    const char *path = segment_path(f, 0);
    uint64_t last_record_at = (n - 1) * fixed_record_bytes;
    const uint8_t two_gib[4] = {0x00, 0x00, 0x00, 0x80};
    write_at(path, last_record_at, two_gib, sizeof two_gib);

    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n - 1);
    assert_int_equal(file_size(path), last_record_at);
    expect_records(log, 0, n - 1);
    eventlog_close(&log);

    /* and a whole header of 0xff bytes appended: also cut */
    uint8_t ff[header_bytes];
    memset(ff, 0xff, sizeof ff);
    write_at(path, last_record_at, ff, sizeof ff);
    log = open_log(f->dir, 0, 0, 0);
    assert_int_equal(eventlog_end_offset(log), n - 1);
    assert_int_equal(file_size(path), last_record_at);
    eventlog_close(&log);
}

/* A flipped payload byte in an older segment (not scanned at open): that
 * record is never served, the others are. */
static void test_checksum_mismatch_in_older_segment_is_not_served(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, four_records_bytes, 0, 0);
    append_fixed(log, 16); /* segments 0, 4, 8, 12 */
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_position_t bad;
    assert_int_equal(eventlog_seek(log, 6, &bad), 0);
    assert_int_equal(bad.segment_base, 4);
    eventlog_close(&log);
    flip_byte(segment_path(f, 4), bad.file_offset + header_bytes + id_bytes + key_bytes + 40);

    log = open_log(f->dir, four_records_bytes, 0, 0);
    assert_int_equal(eventlog_end_offset(log), 16); /* older segments are not scanned */
    expect_records(log, 7, 16);
    eventlog_entry_t e;
    assert_int_equal(eventlog_read(log, bad, &e), -1);
    assert_null(e.payload);
    assert_null(e.event_id);
    /* a seek still finds it (seek checks headers only), but a read refuses it */
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, 6, &pos), 0);
    assert_int_equal(pos.file_offset, bad.file_offset);
    assert_int_equal(eventlog_read(log, pos, &e), -1);
    /* reading from 5 serves 5, then stops at 6 */
    assert_int_equal(eventlog_seek(log, 5, &pos), 0);
    assert_int_equal(eventlog_read(log, pos, &e), 1);
    expect_record(&e, 5);
    pos = e.next_position;
    eventlog_entry_clear(&e);
    assert_int_equal(eventlog_read(log, pos, &e), -1);

    /* a flipped header byte (the timestamp) is caught the same way */
    flip_byte(segment_path(f, 8), fixed_record_bytes + 16);
    assert_int_equal(eventlog_seek(log, 9, &pos), 0);
    assert_int_equal(eventlog_read(log, pos, &e), -1);
    /* a broken length in an older segment: read and seek fail cleanly */
    const uint8_t two_gib[4] = {0x00, 0x00, 0x00, 0x80};
    write_at(segment_path(f, 12), 0, two_gib, sizeof two_gib);
    eventlog_close(&log);
    log = open_log(f->dir, four_records_bytes, 0, 0);
    /* segment 12 is the last one: reopening cut it to nothing */
    assert_int_equal(eventlog_end_offset(log), 12);
    assert_int_equal(file_size(segment_path(f, 12)), 0);
    write_at(segment_path(f, 8), 0, two_gib, sizeof two_gib);
    assert_int_equal(eventlog_seek(log, 10, &pos), -1);
    pos = (eventlog_position_t){.segment_base = 8, .file_offset = 0};
    assert_int_equal(eventlog_read(log, pos, &e), -1);
    expect_records(log, 0, 5);
    eventlog_close(&log);
}

/* A flipped byte in the last record of the last segment: cut at reopen. */
static void test_checksum_mismatch_in_last_record_is_cut_off(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, four_records_bytes, 0, 0);
    append_fixed(log, 10); /* segments 0, 4, 8 (2 records) */
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);
    const char *path = segment_path(f, 8);
    assert_int_equal(file_size(path), 2 * fixed_record_bytes);
    flip_byte(path, fixed_record_bytes + header_bytes + 3); /* in record 9's event id */

    log = open_log(f->dir, four_records_bytes, 0, 0);
    assert_int_equal(eventlog_end_offset(log), 9);
    assert_int_equal(file_size(path), fixed_record_bytes);
    expect_records(log, 0, 9);
    assert_int_equal(append_record(log, fixed_payload_bytes, timestamp_base_ms), 9);
    assert_int_equal(eventlog_sync(log), 0);
    expect_records(log, 0, 10);
    eventlog_close(&log);

    /* a record with a valid checksum but not the offset expected there
     * (here record 9 rewritten to claim offset 8) is cut the same way */
    uint8_t r[fixed_record_bytes];
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, r, sizeof r, fixed_record_bytes), (ssize_t)sizeof r);
    assert_int_equal(r[8], 9);
    r[8] = 8;
    uint32_t crc = eventlog_crc32c(0, r + 8, sizeof r - 8);
    for (int i = 0; i < 4; i++)
        r[4 + i] = (uint8_t)(crc >> (8 * i));
    assert_int_equal(pwrite(fd, r, sizeof r, fixed_record_bytes), (ssize_t)sizeof r);
    close(fd);
    log = open_log(f->dir, four_records_bytes, 0, 0);
    assert_int_equal(eventlog_end_offset(log), 9);
    assert_int_equal(file_size(path), fixed_record_bytes);
    eventlog_close(&log);
}

/* ---- arguments and files ---------------------------------------------------- */

static void test_invalid_arguments_write_nothing(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_record(log, 10, timestamp_base_ms);
    assert_int_equal(eventlog_sync(log), 0);
    uint64_t size = file_size(segment_path(f, 0)); /* preallocated */
    uint64_t bytes = eventlog_bytes(log);

    char id_129[130], key_257[258];
    memset(id_129, 'i', 129);
    id_129[129] = '\0';
    memset(key_257, 'k', 257);
    key_257[257] = '\0';
    uint8_t *big = calloc(1, eventlog_payload_bytes_max + 1);
    assert_non_null(big);
    uint64_t offset = 77;
    assert_int_equal(eventlog_append(log, "", "k", "p", 1, 0, &offset), -1);
    assert_int_equal(eventlog_append(log, NULL, "k", "p", 1, 0, &offset), -1);
    assert_int_equal(eventlog_append(log, id_129, "k", "p", 1, 0, &offset), -1);
    assert_int_equal(eventlog_append(log, "e", key_257, "p", 1, 0, &offset), -1);
    assert_int_equal(eventlog_append(log, "e", "k", NULL, 1, 0, &offset), -1);
    assert_int_equal(
        eventlog_append(log, "e", "k", big, eventlog_payload_bytes_max + 1, 0, &offset), -1);
    assert_int_equal(offset, 77);
    assert_int_equal(eventlog_end_offset(log), 1);
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(file_size(segment_path(f, 0)), size);
    assert_int_equal(eventlog_bytes(log), bytes);

    /* the limits themselves are accepted, and read back */
    id_129[128] = '\0';
    key_257[256] = '\0';
    assert_int_equal(
        eventlog_append(log, id_129, key_257, big, eventlog_payload_bytes_max, 0, &offset), 0);
    assert_int_equal(offset, 1);
    assert_int_equal(eventlog_append(log, "e", NULL, NULL, 0, 0, &offset), 0);
    assert_int_equal(offset, 2);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, 1, &pos), 0);
    eventlog_entry_t e;
    assert_int_equal(eventlog_read(log, pos, &e), 1);
    assert_string_equal(e.event_id, id_129);
    assert_string_equal(e.key, key_257);
    assert_int_equal(e.payload_len, eventlog_payload_bytes_max);
    pos = e.next_position;
    eventlog_entry_clear(&e);
    assert_int_equal(eventlog_read(log, pos, &e), 1);
    assert_string_equal(e.key, "");
    assert_int_equal(e.payload_len, 0);
    eventlog_entry_clear(&e);
    free(big);
    eventlog_close(&log);

    /* bad configurations */
    eventlog_config_t bad = {.dir = f->dir, .segment_bytes_max = (UINT64_C(1) << 30) + 1};
    assert_null(eventlog_open(&bad));
    bad = (eventlog_config_t){.dir = ""};
    assert_null(eventlog_open(&bad));
    bad = (eventlog_config_t){.dir = NULL};
    assert_null(eventlog_open(&bad));
    bad = (eventlog_config_t){.dir = f->dir, .retention_ms = -1};
    assert_null(eventlog_open(&bad));
}

/* The directory is created; files that are not segments are left alone. */
static void test_directory_created_and_other_files_ignored(void **state)
{
    fixture_t *f = *state;
    char dir[128], other[192];
    snprintf(dir, sizeof dir, "%s/topic", f->dir);
    eventlog_t *log = open_log(dir, 0, 0, 0);
    append_record(log, 3, timestamp_base_ms);
    assert_int_equal(eventlog_sync(log), 0);
    eventlog_close(&log);

    const char *others[] = {"notes.txt", "123.log", "00000000000000000007.log.tmp",
                            "0000000000000000000x.log"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(other, sizeof other, "%s/%s", dir, others[i]);
        write_at(other, 0, "junk", 4);
    }
    log = open_log(dir, 0, 0, 0);
    assert_int_equal(eventlog_start_offset(log), 0);
    assert_int_equal(eventlog_end_offset(log), 1);
    expect_records(log, 0, 1);
    eventlog_close(&log);
    for (size_t i = 0; i < 4; i++) {
        snprintf(other, sizeof other, "%s/%s", dir, others[i]);
        assert_int_equal(file_size(other), 4);
    }

    /* a missing parent is an error, not a crash */
    snprintf(dir, sizeof dir, "%s/no/such", f->dir);
    eventlog_config_t config = {.dir = dir};
    assert_null(eventlog_open(&config));
}

/* ---- retention -------------------------------------------------------------- */

static void test_retention_by_size(void **state)
{
    fixture_t *f = *state;
    /* 10 segments of 520 bytes; keep at most 1300 bytes */
    eventlog_t *log = open_log(f->dir, four_records_bytes, 0, 1300);
    append_fixed(log, 40);
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(eventlog_bytes(log), 40 * fixed_record_bytes);
    /* every offset seeks right (more older segments than the index cache) */
    for (uint64_t o = 0; o < 40; o++) {
        eventlog_position_t pos;
        assert_int_equal(eventlog_seek(log, o, &pos), 0);
        assert_int_equal(pos.segment_base, o / 4 * 4);
        assert_int_equal(pos.file_offset, o % 4 * fixed_record_bytes);
    }
    eventlog_position_t old;
    assert_int_equal(eventlog_seek(log, 5, &old), 0);

    assert_int_equal(eventlog_apply_retention(log, 0), 8);
    assert_int_equal(eventlog_start_offset(log), 32);
    assert_int_equal(eventlog_end_offset(log), 40);
    assert_int_equal(eventlog_bytes(log), 2 * four_records_bytes);
    uint64_t bases[16];
    assert_int_equal(list_segments(f->dir, bases, 16), 2);
    assert_int_equal(bases[0], 32);
    assert_int_equal(bases[1], 36);
    /* below the start: clean failures */
    eventlog_position_t pos;
    assert_int_equal(eventlog_seek(log, 31, &pos), -1);
    assert_int_equal(eventlog_seek(log, 0, &pos), -1);
    eventlog_entry_t e;
    assert_int_equal(eventlog_read(log, old, &e), -1);
    assert_null(e.payload);
    expect_records(log, 32, 40);
    /* nothing more to do */
    assert_int_equal(eventlog_apply_retention(log, 0), 0);
    eventlog_close(&log);

    /* the start and end survive a reopen; a limit below one segment
     * deletes everything but the active segment, never that one */
    log = open_log(f->dir, four_records_bytes, 0, 1);
    assert_int_equal(eventlog_start_offset(log), 32);
    assert_int_equal(eventlog_end_offset(log), 40);
    expect_records(log, 32, 40);
    assert_int_equal(eventlog_apply_retention(log, 0), 1);
    assert_int_equal(eventlog_start_offset(log), 36);
    assert_int_equal(eventlog_apply_retention(log, 0), 0);
    assert_true(file_exists(segment_path(f, 36)));
    assert_int_equal(append_record(log, fixed_payload_bytes, timestamp_base_ms), 40);
    assert_int_equal(eventlog_sync(log), 0);
    expect_records(log, 36, 41);
    eventlog_close(&log);
    log = open_log(f->dir, four_records_bytes, 0, 0);
    assert_int_equal(eventlog_start_offset(log), 36);
    assert_int_equal(eventlog_end_offset(log), 41);
    eventlog_close(&log);
}

static void test_retention_by_age(void **state)
{
    fixture_t *f = *state;
    const int64_t retention_ms = 10000;
    /* record i at base + i s; segment k holds 4k..4k+3, newest base + (4k+3) s */
    eventlog_t *log = open_log(f->dir, four_records_bytes, retention_ms, 0);
    append_fixed(log, 24); /* segments 0, 4, ..., 20 */
    assert_int_equal(eventlog_sync(log), 0);

    /* nothing is old enough yet */
    assert_int_equal(eventlog_apply_retention(log, timestamp_base_ms + 13000), 0);
    /* cutoff base + 10 s: segments 0 (newest 3 s) and 4 (7 s) go, 8 (11 s) stays */
    assert_int_equal(eventlog_apply_retention(log, timestamp_base_ms + 20000), 2);
    assert_int_equal(eventlog_start_offset(log), 8);
    assert_false(file_exists(segment_path(f, 4)));
    assert_true(file_exists(segment_path(f, 8)));
    /* a record exactly at the cutoff is not older than it */
    assert_int_equal(eventlog_apply_retention(log, timestamp_base_ms + 21000), 0);
    expect_records(log, 8, 24);
    eventlog_close(&log);

    /* after a reopen the older segments' newest timestamps come from their
     * files (not scanned): cutoff base + 15.5 s removes 8 (11 s) and 12
     * (15 s), keeps 16 (19 s) */
    log = open_log(f->dir, four_records_bytes, retention_ms, 0);
    assert_int_equal(eventlog_start_offset(log), 8);
    assert_int_equal(eventlog_apply_retention(log, timestamp_base_ms + 25500), 2);
    assert_int_equal(eventlog_start_offset(log), 16);
    /* far in the future: all but the active segment */
    assert_int_equal(eventlog_apply_retention(log, INT64_MAX), 1);
    assert_int_equal(eventlog_start_offset(log), 20);
    assert_int_equal(eventlog_end_offset(log), 24);
    uint64_t bases[8];
    assert_int_equal(list_segments(f->dir, bases, 8), 1);
    assert_int_equal(bases[0], 20);
    expect_records(log, 20, 24);
    eventlog_close(&log);

    /* no retention configured: nothing is ever deleted */
    log = open_log(f->dir, four_records_bytes, 0, 0);
    append_fixed(log, 8);
    assert_int_equal(eventlog_sync(log), 0);
    assert_int_equal(eventlog_apply_retention(log, INT64_MAX), 0);
    assert_int_equal(eventlog_start_offset(log), 20);
    eventlog_close(&log);
}

/* A sync in three steps covers exactly what was appended before its
 * begin: records appended while it runs stay unserved until the next
 * sync, and a roll-over in between makes the closed segment durable by
 * itself without the job claiming bytes of the new one. */
static void test_sync_job_covers_what_came_before_it(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, four_records_bytes, 0, 0);
    append_fixed(log, 2);
    eventlog_sync_job_t job;
    assert_int_equal(eventlog_sync_begin(log, &job), 0);
    assert_true(job.data_fd >= 0);
    assert_int_equal(job.end_offset, 2);
    append_fixed(log, 1); /* after the begin: not covered */
    assert_int_equal(eventlog_sync_run(&job), 0);
    assert_int_equal(job.data_fd, -1);
    assert_int_equal(eventlog_durable_end_offset(log), 0); /* not applied yet */
    assert_int_equal(eventlog_sync_end(log, &job), 0);
    assert_int_equal(eventlog_durable_end_offset(log), 2);
    expect_records(log, 0, 2);
    eventlog_position_t pos;
    eventlog_entry_t e;
    assert_int_equal(eventlog_seek(log, 2, &pos), 0);
    assert_int_equal(eventlog_read(log, pos, &e), 0); /* offset 2 is not durable yet */

    /* a job begun before a roll-over, ended after it */
    assert_int_equal(eventlog_sync_begin(log, &job), 0);
    assert_int_equal(job.end_offset, 3);
    append_fixed(log, 3); /* offsets 3..5: 3 fills segment 0, 4 rolls to segment 4 */
    assert_true(file_exists(segment_path(f, 4)));
    assert_int_equal(eventlog_durable_end_offset(log), 4); /* the roll synced segment 0 */
    assert_int_equal(eventlog_sync_run(&job), 0);
    assert_int_equal(eventlog_sync_end(log, &job), 0);
    assert_int_equal(eventlog_durable_end_offset(log), 4); /* never goes back */
    assert_int_equal(eventlog_seek(log, 4, &pos), 0);
    assert_int_equal(eventlog_read(log, pos, &e), 0); /* the new segment's bytes are not durable */
    assert_int_equal(eventlog_sync(log), 0);
    expect_records(log, 0, 6);
    eventlog_close(&log);
}

/* A job whose fsync failed fails the log: nothing it covered is served
 * and appends are refused until the log is reopened. */
static void test_failed_sync_job_fails_the_log(void **state)
{
    fixture_t *f = *state;
    eventlog_t *log = open_log(f->dir, 0, 0, 0);
    append_fixed(log, 2);
    eventlog_sync_job_t job;
    assert_int_equal(eventlog_sync_begin(log, &job), 0);
    assert_int_equal(eventlog_sync_run(&job), 0);
    job.rc = -1;   /* as if the fdatasync had failed */
    job.error = 5; /* EIO */
    assert_int_equal(eventlog_sync_end(log, &job), -1);
    assert_int_equal(eventlog_durable_end_offset(log), 0);
    uint64_t offset = 0;
    assert_int_equal(eventlog_append(log, "e", "", "x", 1, 1, &offset), -1);
    assert_int_equal(eventlog_sync(log), -1);
    assert_int_equal(eventlog_sync_begin(log, &job), -1);
    eventlog_close(&log);
    log = open_log(f->dir, 0, 0, 0); /* reopening keeps what reached the disk */
    assert_int_equal(eventlog_end_offset(log), 2);
    eventlog_close(&log);
}

int main(void)
{
    log_init("test_eventlog"); /* PAYGATE_LOG_LEVEL=error under ctest */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_check_value),
#define DIR_TEST(t) cmocka_unit_test_setup_teardown(t, setup_dir, teardown_dir)
        DIR_TEST(test_append_sync_read_back_in_order),
        DIR_TEST(test_record_layout_on_disk),
        DIR_TEST(test_offsets_dense_across_reopen),
        DIR_TEST(test_read_serves_durable_records_only),
        DIR_TEST(test_segment_roll_over_and_reads_across_segments),
        DIR_TEST(test_seek_in_large_segments),
        DIR_TEST(test_torn_half_record_is_cut_off),
        DIR_TEST(test_preallocated_tail_is_cut_off),
        DIR_TEST(test_garbage_after_last_record_is_cut_off),
        DIR_TEST(test_huge_length_is_treated_as_torn),
        DIR_TEST(test_checksum_mismatch_in_older_segment_is_not_served),
        DIR_TEST(test_checksum_mismatch_in_last_record_is_cut_off),
        DIR_TEST(test_invalid_arguments_write_nothing),
        DIR_TEST(test_directory_created_and_other_files_ignored),
        DIR_TEST(test_retention_by_size),
        DIR_TEST(test_retention_by_age),
        DIR_TEST(test_sync_job_covers_what_came_before_it),
        DIR_TEST(test_failed_sync_job_fails_the_log),
#undef DIR_TEST
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
