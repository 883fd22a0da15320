/*
 * eventlog: one topic's append-only, durable log on disk. See eventlog.h
 * for the contract and broker/README.md ("Event log format") for the
 * format as seen by tools.
 *
 * Directory layout: one file per segment, named by the offset of its first
 * record (20 decimal digits, so names sort like offsets). Other files are
 * ignored.
 *
 *   <dir>/
 *     00000000000000000000.log   offsets     0 ..  4711  older: trusted, not scanned
 *     00000000000000004712.log   offsets  4712 ..  9999  older: trusted, not scanned
 *     00000000000000010000.log   offsets 10000 .. end-1  active: scanned at open,
 *                                                        appended to
 *
 * In memory: the segment list (one small entry per segment: base, size,
 * newest timestamp), the active segment's fd, a few cached read fds, a
 * sparse index (the position of every 1024th record) for the active
 * segment and for at most 8 older segments, and one 64 KiB scan buffer.
 * Payloads are only ever in memory as the record being read: memory does
 * not grow with the backlog beyond one entry per segment.
 *
 * What must never happen: serving a record whose checksum does not match,
 * serving a record that is not yet durable, splitting a record over two
 * segments, deleting the active segment, or allocating from an unchecked
 * length read from disk.
 */
#include "eventlog.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log/log.h"

static_assert(sizeof(off_t) == 8, "eventlog needs 64-bit file offsets");

/* ---- limits ----------------------------------------------------------------- */

#define segment_bytes_default (UINT64_C(64) << 20) /* 64 MiB */
#define segment_bytes_limit   (UINT64_C(1) << 30)  /* largest segment_bytes_max accepted */

enum {
    record_header_bytes = 32,  /* length .. payload_len */
    record_checked_offset = 8, /* the crc covers the record from this byte on */
    record_checked_header_bytes = record_header_bytes - record_checked_offset,
    record_bytes_max = record_header_bytes + eventlog_event_id_bytes_max + eventlog_key_bytes_max +
                       eventlog_payload_bytes_max,
    segment_name_digits = 20,
    segment_name_bytes_max = 32,   /* "%020" PRIu64 ".log" + NUL fits */
    segments_max = 1 << 20,        /* segment files in one log */
    index_stride_records = 1024,   /* the sparse index keeps every 1024th record */
    index_entries_max = 8192,      /* per segment (64 KiB); past it, seeks scan */
    indexed_segments_max = 8,      /* older segments holding an index at once */
    read_fds_max = 4,              /* fds of older segments kept open for reads */
    scan_buffer_bytes = 64 * 1024, /* read-ahead of the recovery and seek scans */
    read_ahead_bytes = 2048,       /* first read of a record: a small one whole */
};

/* The active segment is allocated this far ahead of its records (zeros),
 * so that an append does not change the file's size: an fdatasync after
 * an append that grows the file must also write the inode (measured on
 * our ext4 VMs: 0.27-0.30 ms against 0.19 ms). The size then changes once
 * per chunk. */
#define preallocate_chunk_bytes (UINT64_C(1) << 20) /* 1 MiB */

static_assert(record_bytes_max < UINT32_MAX, "a record's length must fit its u32 field");
static_assert(scan_buffer_bytes >= record_header_bytes, "the scan buffer holds a header");

/* ---- CRC-32C ---------------------------------------------------------------- */

/* Castagnoli polynomial 0x82F63B78 (reflected), one entry per byte value. */
static const uint32_t crc32c_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c, 0x26a1e7e8, 0xd4ca64eb,
    0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b, 0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24,
    0x105ec76f, 0xe235446c, 0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc, 0xbc267848, 0x4e4dfb4b,
    0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a, 0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35,
    0xaa64d611, 0x580f5512, 0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad, 0x1642ae59, 0xe4292d5a,
    0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a, 0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595,
    0x417b1dbc, 0xb3109ebf, 0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f, 0xed03a29b, 0x1f682198,
    0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927, 0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38,
    0xdbfc821c, 0x2997011f, 0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e, 0x4767748a, 0xb50cf789,
    0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859, 0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46,
    0x7198540d, 0x83f3d70e, 0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de, 0xdde0eb2a, 0x2f8b6829,
    0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c, 0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93,
    0x082f63b7, 0xfa44e0b4, 0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b, 0xb4091bff, 0x466298fc,
    0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c, 0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033,
    0xa24bb5a6, 0x502036a5, 0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975, 0x0e330a81, 0xfc588982,
    0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d, 0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622,
    0x38cc2a06, 0xcaa7a905, 0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8, 0xe52cc12c, 0x1747422f,
    0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff, 0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0,
    0xd3d3e1ab, 0x21b862a8, 0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78, 0x7fab5e8c, 0x8dc0dd8f,
    0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee, 0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1,
    0x69e9f0d5, 0x9b8273d6, 0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69, 0xd5cf889d, 0x27a40b9e,
    0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e, 0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

/* The usual byte-at-a-time table CRC, without the pre- and post-inversion. */
static uint32_t crc32c_table_update(uint32_t crc, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
/* The same with SSE4.2's crc32 instruction (which computes exactly this
 * CRC-32C, 8 bytes per instruction): the log computes one per append and
 * one per read, over every byte of the record. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42_update(uint32_t crc,
                                                                      const uint8_t *p, size_t len)
{
    uint64_t c = crc;
    for (; len >= 8; len -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, sizeof word);
        c = __builtin_ia32_crc32di(c, word);
    }
    uint32_t c32 = (uint32_t)c;
    for (; len > 0; len--, p++)
        c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}
#endif

/* Pre- and post-inverted, so that crc32c(crc32c(0, a), b) ==
 * crc32c(0, a followed by b); the instruction where the CPU has it. */
uint32_t eventlog_crc32c(uint32_t crc, const void *data, size_t len)
{
#if defined(__x86_64__)
    static atomic_int has_sse42 = -1; /* -1: not asked yet (any thread may ask) */
    int has = atomic_load_explicit(&has_sse42, memory_order_relaxed);
    if (has < 0) {
        has = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        atomic_store_explicit(&has_sse42, has, memory_order_relaxed);
    }
    if (has)
        return ~crc32c_sse42_update(~crc, data, len);
#endif
    return ~crc32c_table_update(~crc, data, len);
}

/* ---- the record ------------------------------------------------------------- */

/*
 * One record, all integers little-endian. 'length' counts every byte after
 * the crc field (24 + event_id_len + key_len + payload_len) and 'crc32c' is
 * the CRC-32C of exactly those bytes, so a record occupies 8 + length bytes
 * and the next one starts right after it. No padding, no alignment.
 *
 *  byte 0        4        8                  16                 24       26       28        32
 *       +--------+--------+------------------+------------------+--------+--------+---------+
 *       | length | crc32c | offset           | timestamp_ms     | event_ | key_len| payload_|
 *       | u32    | u32    | u64              | i64              | id_len | u16    | len u32 |
 *       |        |        |                  |                  | u16    |        |         |
 *       +--------+--------+------------------+------------------+--------+--------+---------+
 *       | event_id (event_id_len, 1..128 bytes) | key (key_len, 0..256) | payload (0..1 MiB) |
 *       +---------------------------------------+-----------------------+--------------------+
 *                         |<-------- length bytes, covered by crc32c (byte 8 to the end) ---->|
 *
 * A record is valid when: length == 24 + the three lengths, each length is
 * within its limit (so length <= 32 + 128 + 256 + 1 MiB and nothing larger
 * is ever allocated), the whole record lies within the segment, the crc
 * matches, and offset is the one expected at that place.
 */
typedef struct {
    uint32_t length;
    uint32_t crc;
    uint64_t offset;
    int64_t timestamp_ms;
    uint16_t event_id_len;
    uint16_t key_len;
    uint32_t payload_len;
} record_header_t;

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Writes the 32 header bytes of 'h' (crc included, as given) to 'out'. */
static void record_header_encode(const record_header_t *h, uint8_t out[record_header_bytes])
{
    put_u32(out + 0, h->length);
    put_u32(out + 4, h->crc);
    put_u64(out + 8, h->offset);
    put_u64(out + 16, (uint64_t)h->timestamp_ms);
    put_u16(out + 24, h->event_id_len);
    put_u16(out + 26, h->key_len);
    put_u32(out + 28, h->payload_len);
}

/* Reads the 32 header bytes at 'in' into '*h', trusting nothing yet. */
static void record_header_decode(const uint8_t in[record_header_bytes], record_header_t *h)
{
    h->length = get_u32(in + 0);
    h->crc = get_u32(in + 4);
    h->offset = get_u64(in + 8);
    h->timestamp_ms = (int64_t)get_u64(in + 16);
    h->event_id_len = get_u16(in + 24);
    h->key_len = get_u16(in + 26);
    h->payload_len = get_u32(in + 28);
}

/* The record's size on disk (header included) when the lengths in 'h' are
 * consistent and within the limits, else 0. This is the check that stands
 * between a garbage length on disk and an allocation. */
static uint64_t record_header_bytes_total(const record_header_t *h)
{
    if (h->event_id_len == 0 || h->event_id_len > eventlog_event_id_bytes_max)
        return 0;
    if (h->key_len > eventlog_key_bytes_max || h->payload_len > eventlog_payload_bytes_max)
        return 0;
    uint64_t body = (uint64_t)h->event_id_len + h->key_len + h->payload_len;
    if ((uint64_t)h->length != record_checked_header_bytes + body)
        return 0;
    uint64_t total = record_header_bytes + body;
    assert(total <= record_bytes_max);
    return total;
}

/* ---- the log ---------------------------------------------------------------- */

typedef struct {
    uint64_t base;               /* offset of its first record (its name) */
    uint64_t bytes;              /* its size: bytes of whole records only */
    int64_t newest_timestamp_ms; /* largest record timestamp (INT64_MIN: none) */
    uint64_t *index;             /* index[k]: position of record base + k * stride */
    uint32_t index_len;          /* entries known, always a prefix from k = 0 */
    uint32_t index_capacity;
    uint64_t index_used_at; /* self->clock at its last use, for eviction */
} segment_t;

typedef struct {
    int fd; /* -1: free */
    uint64_t segment_base;
    uint64_t used_at;
} read_fd_t;

struct eventlog {
    eventlog_config_t config; /* config.dir points to 'dir' */
    char *dir;
    int dir_fd;
    segment_t *segments; /* sorted by base; the last one is the active segment */
    size_t segment_count;
    size_t segment_capacity;
    int active_fd;
    uint64_t active_allocated;     /* the active segment's file size: records + zeros */
    bool preallocate_off;          /* fallocate is not supported here: plain appends */
    uint64_t end_offset;           /* one past the newest appended record */
    uint64_t durable_end_offset;   /* one past the newest durable record */
    uint64_t active_durable_bytes; /* bytes of the active segment known durable */
    uint64_t bytes_total;          /* sum of the segments' bytes */
    bool dir_dirty;                /* a segment was created since the last dir fsync */
    uint64_t dir_changes;          /* segments created so far, for sync jobs */
    bool failed;                   /* a write or fsync failed: appends refused */
    uint64_t clock;                /* counts uses, for the LRU caches */
    size_t indexed_count;          /* older (non-active) segments holding an index */
    read_fd_t read_fds[read_fds_max];
    uint8_t *scan_buffer; /* scan_buffer_bytes */
};

static segment_t *active_segment(eventlog_t *self)
{
    assert(self->segment_count > 0);
    return &self->segments[self->segment_count - 1];
}

static void segment_name(uint64_t base, char name[segment_name_bytes_max])
{
    snprintf(name, segment_name_bytes_max, "%020" PRIu64 ".log", base);
}

/* Parses a segment file name into '*base'. False for anything that is not
 * exactly 20 digits and ".log" (such files are not ours: ignored). */
static bool segment_name_parse(const char *name, uint64_t *base)
{
    if (strlen(name) != segment_name_digits + 4 || strcmp(name + segment_name_digits, ".log") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < segment_name_digits; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        unsigned digit = (unsigned)(name[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *base = v;
    return true;
}

/* Milliseconds since the epoch of a file's mtime. */
static int64_t stat_mtime_ms(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* Sets the mtime of the file 'fd' to 'timestamp_ms' rounded UP to a whole
 * second, so that a file system that keeps only seconds never makes a
 * segment look older than its newest record. Returns 0 or -1. */
static int segment_stamp_mtime(int fd, int64_t timestamp_ms)
{
    int64_t seconds = timestamp_ms / 1000; /* rounds toward zero: up when negative */
    if (timestamp_ms % 1000 > 0)
        seconds++;
    struct timespec times[2] = {{.tv_sec = 0, .tv_nsec = UTIME_OMIT},
                                {.tv_sec = (time_t)seconds, .tv_nsec = 0}};
    return futimens(fd, times);
}

/* Reads or writes ('write') all of 'iov' at file position 'pos', going on
 * after short transfers. Returns 0, or -1 with errno set (0 when a read
 * met the end of the file). 'iov' is consumed. */
static int io_all_at(int fd, struct iovec *iov, int iov_count, uint64_t pos, bool write)
{
    for (;;) {
        while (iov_count > 0 && iov->iov_len == 0) {
            iov++;
            iov_count--;
        }
        if (iov_count == 0)
            return 0;
        ssize_t n = write ? pwritev(fd, iov, iov_count, (off_t)pos)
                          : preadv(fd, iov, iov_count, (off_t)pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = write ? EIO : 0;
            return -1;
        }
        pos += (uint64_t)n;
        size_t done = (size_t)n;
        while (iov_count > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iov_count--;
        }
        if (iov_count > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
}

/* Marks the log failed after a write or fsync error: the state of the
 * file's pages is then unknown, so no further append or sync is accepted
 * (reopening the log recovers from what is on disk). */
static void eventlog_fail(eventlog_t *self, const char *what)
{
    log_error("eventlog %s: %s failed: %s; appends refused until the log is reopened", self->dir,
              what, strerror(errno));
    self->failed = true;
}

/* Binary search: the index of the segment whose base is exactly 'base', or
 * -1. */
static ptrdiff_t segment_find_base(const eventlog_t *self, uint64_t base)
{
    size_t lo = 0, hi = self->segment_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (self->segments[mid].base < base)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < self->segment_count && self->segments[lo].base == base)
        return (ptrdiff_t)lo;
    return -1;
}

/* Binary search: the index of the segment holding 'offset' (the last one
 * whose base is <= offset). The caller checked start <= offset. */
static size_t segment_find_offset(const eventlog_t *self, uint64_t offset)
{
    assert(self->segment_count > 0 && self->segments[0].base <= offset);
    size_t lo = 0, hi = self->segment_count; /* answer in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (self->segments[mid].base <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Makes room for one more segment entry. Returns 0 or -1. */
static int segments_reserve(eventlog_t *self)
{
    if (self->segment_count < self->segment_capacity)
        return 0;
    if (self->segment_count >= segments_max) {
        log_error("eventlog %s: %d segments, the limit: apply retention or raise "
                  "segment_bytes_max",
                  self->dir, segments_max);
        return -1;
    }
    size_t capacity = self->segment_capacity ? self->segment_capacity * 2 : 16;
    segment_t *grown = realloc(self->segments, capacity * sizeof *grown);
    if (grown == NULL) {
        log_error("eventlog %s: out of memory for the segment list", self->dir);
        return -1;
    }
    self->segments = grown;
    self->segment_capacity = capacity;
    return 0;
}

/* ---- the sparse index ------------------------------------------------------- */

/* Frees the index of the least recently used older segment other than
 * 'keep' (an index into self->segments). */
static void index_evict_one(eventlog_t *self, size_t keep)
{
    segment_t *victim = NULL;
    for (size_t i = 0; i + 1 < self->segment_count; i++) {
        segment_t *s = &self->segments[i];
        if (i == keep || s->index == NULL)
            continue;
        if (victim == NULL || s->index_used_at < victim->index_used_at)
            victim = s;
    }
    assert(victim != NULL);
    free(victim->index);
    victim->index = NULL;
    victim->index_len = victim->index_capacity = 0;
    self->indexed_count--;
}

/* Gives segment 'i' an index (just its first record, position 0) if it has
 * none, evicting another older segment's index past indexed_segments_max.
 * Returns 0, or -1 when out of memory. */
static int index_acquire(eventlog_t *self, size_t i)
{
    segment_t *s = &self->segments[i];
    s->index_used_at = ++self->clock;
    if (s->index != NULL)
        return 0;
    s->index = malloc(64 * sizeof *s->index);
    if (s->index == NULL) {
        log_error("eventlog %s: out of memory for an index", self->dir);
        return -1;
    }
    s->index[0] = 0;
    s->index_len = 1;
    s->index_capacity = 64;
    if (i + 1 < self->segment_count) {
        self->indexed_count++;
        while (self->indexed_count > indexed_segments_max)
            index_evict_one(self, i);
    }
    return 0;
}

/* Notes that record 'offset' of segment 's' starts at 'position', if it is
 * the next entry the index lacks. Out of memory only stops the indexing. */
static void index_note(segment_t *s, uint64_t offset, uint64_t position)
{
    uint64_t relative = offset - s->base;
    if (s->index == NULL || relative % index_stride_records != 0 ||
        relative / index_stride_records != s->index_len || s->index_len >= index_entries_max)
        return;
    if (s->index_len == s->index_capacity) {
        uint32_t capacity = s->index_capacity * 2;
        uint64_t *grown = realloc(s->index, capacity * sizeof *grown);
        if (grown == NULL)
            return;
        s->index = grown;
        s->index_capacity = capacity;
    }
    s->index[s->index_len++] = position;
}

/* ---- file descriptors ------------------------------------------------------- */

/* An fd to read segment 'i': the active fd, or one of a few cached
 * read-only fds (the least recently used is closed to make room). -1 on an
 * error, logged. */
static int segment_fd(eventlog_t *self, size_t i)
{
    if (i + 1 == self->segment_count)
        return self->active_fd;
    uint64_t base = self->segments[i].base;
    read_fd_t *slot = NULL;
    for (int k = 0; k < read_fds_max; k++) {
        read_fd_t *r = &self->read_fds[k];
        if (r->fd >= 0 && r->segment_base == base) {
            r->used_at = ++self->clock;
            return r->fd;
        }
        if (slot == NULL || r->fd < 0 || (slot->fd >= 0 && r->used_at < slot->used_at))
            slot = r;
    }
    char name[segment_name_bytes_max];
    segment_name(base, name);
    int fd = openat(self->dir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_error("eventlog %s: open %s: %s", self->dir, name, strerror(errno));
        return -1;
    }
    if (slot->fd >= 0)
        close(slot->fd);
    slot->fd = fd;
    slot->segment_base = base;
    slot->used_at = ++self->clock;
    return fd;
}

/* Closes the cached read fd of the segment at 'base', if any. */
static void read_fd_forget(eventlog_t *self, uint64_t base)
{
    for (int k = 0; k < read_fds_max; k++) {
        read_fd_t *r = &self->read_fds[k];
        if (r->fd >= 0 && r->segment_base == base) {
            close(r->fd);
            r->fd = -1;
        }
    }
}

/* ---- scanning --------------------------------------------------------------- */

/* A forward reader over one segment file with a read-ahead buffer, so a
 * scan over many small records costs one pread per 64 KiB, and over big
 * ones one pread per header. */
typedef struct {
    int fd;
    uint64_t file_bytes; /* never reads at or past this */
    uint8_t *buffer;     /* scan_buffer_bytes */
    uint64_t buffer_pos; /* file position of buffer[0] */
    size_t buffer_len;
    bool io_error; /* a pread failed (errno logged by the caller) */
} scanner_t;

/* Returns the 'len' (<= scan_buffer_bytes) bytes at file position 'pos',
 * or NULL when they are not all in the file (or on an I/O error, which
 * sets s->io_error). */
static const uint8_t *scanner_bytes(scanner_t *s, uint64_t pos, size_t len)
{
    assert(len <= scan_buffer_bytes);
    if (pos > s->file_bytes || len > s->file_bytes - pos)
        return NULL;
    if (pos >= s->buffer_pos && pos + len <= s->buffer_pos + s->buffer_len)
        return s->buffer + (pos - s->buffer_pos);
    uint64_t want = s->file_bytes - pos;
    if (want > scan_buffer_bytes)
        want = scan_buffer_bytes;
    struct iovec iov = {.iov_base = s->buffer, .iov_len = (size_t)want};
    s->buffer_pos = pos;
    s->buffer_len = 0;
    if (io_all_at(s->fd, &iov, 1, pos, false) != 0) {
        s->io_error = true;
        return NULL;
    }
    s->buffer_len = (size_t)want;
    return s->buffer;
}

/* Why a record failed to scan, for the log line. */
typedef enum {
    SCAN_OK = 0,
    SCAN_SHORT,    /* the file ends inside the record */
    SCAN_LENGTH,   /* the lengths are inconsistent or over a limit */
    SCAN_OFFSET,   /* not the offset expected at that place */
    SCAN_CHECKSUM, /* crc mismatch */
    SCAN_IO,       /* pread failed */
} scan_result_t;

static const char *scan_result_text(scan_result_t r)
{
    switch (r) {
    case SCAN_OK:
        return "ok";
    case SCAN_SHORT:
        return "short record (torn write)";
    case SCAN_LENGTH:
        return "bad length";
    case SCAN_OFFSET:
        return "unexpected offset";
    case SCAN_CHECKSUM:
        return "checksum mismatch";
    case SCAN_IO:
        return "read error";
    }
    return "?";
}

/* Checks the record at 'pos', which must hold offset 'expected', and sets
 * '*h' and '*total' (its size on disk). With 'check_crc' the whole record
 * is read and its checksum verified; without, only its header. */
static scan_result_t scan_record(scanner_t *s, uint64_t pos, uint64_t expected, bool check_crc,
                                 record_header_t *h, uint64_t *total)
{
    const uint8_t *head = scanner_bytes(s, pos, record_header_bytes);
    if (head == NULL)
        return s->io_error ? SCAN_IO : SCAN_SHORT;
    record_header_decode(head, h);
    uint32_t crc = eventlog_crc32c(0, head + record_checked_offset, record_checked_header_bytes);
    *total = record_header_bytes_total(h);
    if (*total == 0)
        return SCAN_LENGTH;
    if (h->offset != expected)
        return SCAN_OFFSET;
    if (*total > s->file_bytes - pos)
        return SCAN_SHORT;
    if (!check_crc)
        return SCAN_OK;
    uint64_t at = pos + record_header_bytes;
    uint64_t left = *total - record_header_bytes;
    while (left > 0) {
        size_t chunk = left > scan_buffer_bytes ? scan_buffer_bytes : (size_t)left;
        const uint8_t *p = scanner_bytes(s, at, chunk);
        if (p == NULL)
            return s->io_error ? SCAN_IO : SCAN_SHORT;
        crc = eventlog_crc32c(crc, p, chunk);
        at += chunk;
        left -= chunk;
    }
    return crc == h->crc ? SCAN_OK : SCAN_CHECKSUM;
}

/* True when the bytes of 'fd' from 'pos' on (at most a record header's
 * worth, up to 'file_bytes') are all zero: space preallocated and never
 * written, not a torn record. */
static bool tail_is_zeros(int fd, uint64_t pos, uint64_t file_bytes)
{
    uint8_t head[record_header_bytes];
    size_t n = file_bytes - pos < sizeof head ? (size_t)(file_bytes - pos) : sizeof head;
    struct iovec iov = {.iov_base = head, .iov_len = n};
    if (io_all_at(fd, &iov, 1, pos, false) != 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (head[i] != 0)
            return false;
    return true;
}

/* Recovers the active segment (the last, open on 'fd', 'file_bytes' long):
 * checks every record, cuts the file at the first one that is not valid,
 * fsyncs it, and builds its index and newest timestamp. Sets
 * self->end_offset. Returns 0, or -1 on an I/O error. */
static int segment_recover(eventlog_t *self, int fd, uint64_t file_bytes)
{
    segment_t *s = active_segment(self);
    scanner_t scanner = {.fd = fd, .file_bytes = file_bytes, .buffer = self->scan_buffer};
    if (index_acquire(self, self->segment_count - 1) != 0)
        return -1;
    uint64_t pos = 0;
    uint64_t offset = s->base;
    int64_t newest = INT64_MIN;
    scan_result_t result = SCAN_OK;
    while (pos < file_bytes) {
        record_header_t h;
        uint64_t total = 0;
        result = scan_record(&scanner, pos, offset, true, &h, &total);
        if (result != SCAN_OK)
            break;
        if (h.timestamp_ms > newest)
            newest = h.timestamp_ms;
        pos += total;
        offset++;
        index_note(s, offset, pos);
    }
    char name[segment_name_bytes_max];
    segment_name(s->base, name);
    if (result == SCAN_IO) {
        log_error("eventlog %s: reading %s: %s", self->dir, name, strerror(errno));
        return -1;
    }
    if (pos < file_bytes) {
        if (tail_is_zeros(fd, pos, file_bytes))
            log_info("eventlog %s: %s: cutting %" PRIu64
                     " bytes of zeros (preallocated, never written) "
                     "after byte %" PRIu64 " (offset %" PRIu64 ")",
                     self->dir, name, file_bytes - pos, pos, offset);
        else
            log_warn("eventlog %s: %s: %s at byte %" PRIu64 " (offset %" PRIu64
                     "): cutting %" PRIu64 " bytes off the end",
                     self->dir, name, scan_result_text(result), pos, offset, file_bytes - pos);
        if (ftruncate(fd, (off_t)pos) != 0) {
            log_error("eventlog %s: truncating %s: %s", self->dir, name, strerror(errno));
            return -1;
        }
    }
    /* Records a process wrote before dying unsynced may be in the page
     * cache only; they are served from now on, so make them durable. */
    if (fsync(fd) != 0) {
        log_error("eventlog %s: fsync of %s: %s", self->dir, name, strerror(errno));
        return -1;
    }
    s->bytes = pos;
    s->newest_timestamp_ms = newest;
    self->end_offset = offset;
    return 0;
}

/* ---- open and close --------------------------------------------------------- */

/* fsyncs the directory holding 'path' (so that creating 'path' is durable).
 * Returns 0 or -1. */
static int fsync_parent_dir(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    for (size_t len = strlen(copy); len > 1 && copy[len - 1] == '/'; len--)
        copy[len - 1] = '\0'; /* "a/b/" is "a/b" */
    char *slash = strrchr(copy, '/');
    const char *parent = ".";
    if (slash == copy)
        parent = "/";
    else if (slash != NULL) {
        *slash = '\0';
        parent = copy;
    }
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd >= 0 && fsync(fd) == 0 ? 0 : -1;
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

/* Lists the segment files of the directory into self->segments, sorted by
 * base, with their size and mtime (the newest-timestamp stamp of an older
 * segment). Returns 0 or -1. */
static int segments_list(eventlog_t *self)
{
    int fd = dup(self->dir_fd);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (dir == NULL) {
        if (fd >= 0)
            close(fd);
        log_error("eventlog %s: listing: %s", self->dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        uint64_t base;
        if (!segment_name_parse(d->d_name, &base))
            continue;
        struct stat st;
        if (fstatat(self->dir_fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            log_error("eventlog %s: stat %s: %s", self->dir, d->d_name, strerror(errno));
            rc = -1;
            break;
        }
        if (!S_ISREG(st.st_mode)) {
            log_warn("eventlog %s: %s is not a regular file: ignored", self->dir, d->d_name);
            continue;
        }
        if (segments_reserve(self) != 0) {
            rc = -1;
            break;
        }
        self->segments[self->segment_count++] = (segment_t){
            .base = base,
            .bytes = (uint64_t)st.st_size,
            .newest_timestamp_ms = stat_mtime_ms(&st),
        };
    }
    closedir(dir);
    return rc;
}

static int segment_compare(const void *a, const void *b)
{
    uint64_t x = ((const segment_t *)a)->base, y = ((const segment_t *)b)->base;
    return (x > y) - (x < y);
}

/* Creates the empty segment file starting at self->end_offset, makes it
 * the active segment (the previous active fd must be closed already) and
 * marks the directory to be synced. Returns 0 or -1. */
static int segment_create(eventlog_t *self)
{
    if (segments_reserve(self) != 0)
        return -1;
    char name[segment_name_bytes_max];
    segment_name(self->end_offset, name);
    int fd = openat(self->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0) {
        log_error("eventlog %s: create %s: %s", self->dir, name, strerror(errno));
        return -1;
    }
    self->segments[self->segment_count++] = (segment_t){
        .base = self->end_offset,
        .newest_timestamp_ms = INT64_MIN,
    };
    self->active_fd = fd;
    self->active_allocated = 0;
    self->active_durable_bytes = 0;
    self->dir_dirty = true;
    self->dir_changes++;
    /* Without memory for an index, seeks scan from the segment start (and
     * try again to index): not an error. */
    (void)index_acquire(self, self->segment_count - 1);
    return 0;
}

/* Checks 'config' and copies it with the defaults filled in. */
static bool config_check(const eventlog_config_t *config, eventlog_config_t *out)
{
    if (config == NULL || config->dir == NULL || config->dir[0] == '\0') {
        log_error("eventlog: no directory given");
        return false;
    }
    *out = *config;
    if (out->segment_bytes_max == 0)
        out->segment_bytes_max = segment_bytes_default;
    if (out->segment_bytes_max > segment_bytes_limit) {
        log_error("eventlog %s: segment_bytes_max %" PRIu64 " is over the limit %" PRIu64,
                  config->dir, out->segment_bytes_max, segment_bytes_limit);
        return false;
    }
    if (out->retention_ms < 0) {
        log_error("eventlog %s: retention_ms %" PRId64 " is negative", config->dir,
                  out->retention_ms);
        return false;
    }
    return true;
}

eventlog_t *eventlog_open(const eventlog_config_t *config)
{
    eventlog_config_t checked;
    if (!config_check(config, &checked))
        return NULL;
    eventlog_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->dir_fd = -1;
    self->active_fd = -1;
    for (int k = 0; k < read_fds_max; k++)
        self->read_fds[k].fd = -1;
    self->config = checked;
    self->dir = strdup(checked.dir);
    self->scan_buffer = malloc(scan_buffer_bytes);
    if (self->dir == NULL || self->scan_buffer == NULL) {
        log_error("eventlog %s: out of memory", checked.dir);
        goto fail;
    }
    self->config.dir = self->dir;

    bool created = mkdir(self->dir, 0750) == 0;
    if (!created && errno != EEXIST) {
        log_error("eventlog %s: mkdir: %s", self->dir, strerror(errno));
        goto fail;
    }
    self->dir_fd = open(self->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (self->dir_fd < 0) {
        log_error("eventlog %s: open: %s", self->dir, strerror(errno));
        goto fail;
    }
    if (created && fsync_parent_dir(self->dir) != 0) {
        log_error("eventlog %s: fsync of its parent directory: %s", self->dir, strerror(errno));
        goto fail;
    }

    if (segments_list(self) != 0)
        goto fail;
    if (self->segment_count == 0) {
        self->end_offset = 0;
        if (segment_create(self) != 0)
            goto fail;
        if (fsync(self->dir_fd) != 0) {
            log_error("eventlog %s: fsync: %s", self->dir, strerror(errno));
            goto fail;
        }
        self->dir_dirty = false;
    } else {
        qsort(self->segments, self->segment_count, sizeof *self->segments, segment_compare);
        segment_t *last = active_segment(self);
        char name[segment_name_bytes_max];
        segment_name(last->base, name);
        self->active_fd = openat(self->dir_fd, name, O_RDWR | O_CLOEXEC);
        struct stat st;
        if (self->active_fd < 0 || fstat(self->active_fd, &st) != 0) {
            log_error("eventlog %s: open %s: %s", self->dir, name, strerror(errno));
            goto fail;
        }
        if (segment_recover(self, self->active_fd, (uint64_t)st.st_size) != 0)
            goto fail;
        self->active_durable_bytes = active_segment(self)->bytes;
        self->active_allocated = active_segment(self)->bytes; /* recovery cut the rest */
    }
    for (size_t i = 0; i < self->segment_count; i++)
        self->bytes_total += self->segments[i].bytes;
    self->durable_end_offset = self->end_offset;
    log_info("eventlog %s: open, %zu segment(s), offsets %" PRIu64 "..%" PRIu64 ", %" PRIu64
             " bytes",
             self->dir, self->segment_count, eventlog_start_offset(self), self->end_offset,
             self->bytes_total);
    return self;

fail:
    eventlog_close(&self);
    return NULL;
}

void eventlog_close(eventlog_t **self_p)
{
    assert(self_p != NULL);
    eventlog_t *self = *self_p;
    if (self == NULL)
        return;
    /* Leave no preallocated zeros behind (not synced: if this is lost,
     * recovery cuts them at the next open). */
    if (self->active_fd >= 0 && !self->failed && self->segment_count > 0 &&
        self->active_allocated > active_segment(self)->bytes &&
        ftruncate(self->active_fd, (off_t)active_segment(self)->bytes) != 0)
        log_warn("eventlog %s: cutting the preallocated space: %s", self->dir, strerror(errno));
    for (size_t i = 0; i < self->segment_count; i++)
        free(self->segments[i].index);
    free(self->segments);
    for (int k = 0; k < read_fds_max; k++)
        if (self->read_fds[k].fd >= 0)
            close(self->read_fds[k].fd);
    if (self->active_fd >= 0)
        close(self->active_fd);
    if (self->dir_fd >= 0)
        close(self->dir_fd);
    free(self->scan_buffer);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

/* ---- append and sync -------------------------------------------------------- */

/* Closes the active segment and starts a new one at self->end_offset.
 * The closed segment is made durable first (its records, its mtime set to
 * its newest record's timestamp, and its directory entry), so every
 * segment but the active one is entirely durable, and the newest-timestamp
 * stamp survives a restart. Returns 0 or -1. */
static int segment_roll(eventlog_t *self)
{
    segment_t *old = active_segment(self);
    assert(old->bytes > 0); /* an empty segment never rolls: no record is split */
    /* A closed segment is exactly its records: the sizes of older
     * segments are read from the file system at open. (Before the mtime:
     * truncating sets it.) */
    if (self->active_allocated > old->bytes) {
        if (ftruncate(self->active_fd, (off_t)old->bytes) != 0) {
            eventlog_fail(self, "cutting the preallocated space of the segment being closed");
            return -1;
        }
        self->active_allocated = old->bytes;
    }
    if (segment_stamp_mtime(self->active_fd, old->newest_timestamp_ms) != 0)
        log_warn("eventlog %s: setting the mtime of segment %" PRIu64 ": %s (retention by age "
                 "will use the time of its last write)",
                 self->dir, old->base, strerror(errno));
    if (fsync(self->active_fd) != 0) {
        eventlog_fail(self, "fsync of the segment being closed");
        return -1;
    }
    if (self->dir_dirty && fsync(self->dir_fd) != 0) {
        eventlog_fail(self, "fsync of the directory");
        return -1;
    }
    self->dir_dirty = false;
    int old_fd = self->active_fd;
    bool old_indexed = old->index != NULL;
    if (segment_create(self) != 0)
        return -1; /* the old segment stays active; nothing was lost */
    close(old_fd);
    self->durable_end_offset = self->end_offset;
    if (old_indexed) {
        self->indexed_count++;
        while (self->indexed_count > indexed_segments_max)
            index_evict_one(self, self->segment_count - 1);
    }
    return 0;
}

/* Extends the active segment's preallocated space (zeros) to cover at
 * least 'needed' bytes: to the next whole chunk, not past
 * segment_bytes_max unless one record needs more. Where the file system
 * cannot preallocate, appends grow the file instead (logged once); any
 * other failure is left to the write that follows, which reports it. */
static void segment_preallocate(eventlog_t *self, uint64_t needed)
{
    if (self->preallocate_off)
        return;
    uint64_t target =
        (needed + preallocate_chunk_bytes - 1) / preallocate_chunk_bytes * preallocate_chunk_bytes;
    if (target > self->config.segment_bytes_max)
        target = self->config.segment_bytes_max;
    if (target < needed)
        target = needed;
    assert(target > self->active_allocated);
    if (fallocate(self->active_fd, 0, (off_t)self->active_allocated,
                  (off_t)(target - self->active_allocated)) == 0) {
        self->active_allocated = target;
        return;
    }
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
        log_info("eventlog %s: the file system cannot preallocate (%s): every append grows the "
                 "segment",
                 self->dir, strerror(errno));
        self->preallocate_off = true;
    }
}

int eventlog_append(eventlog_t *self, const char *event_id, const char *key, const void *payload,
                    size_t payload_len, int64_t timestamp_ms, uint64_t *offset)
{
    assert(self != NULL);
    if (event_id == NULL || (payload == NULL && payload_len > 0))
        return -1;
    if (key == NULL)
        key = "";
    size_t event_id_len = strnlen(event_id, eventlog_event_id_bytes_max + 1);
    size_t key_len = strnlen(key, eventlog_key_bytes_max + 1);
    if (event_id_len == 0 || event_id_len > eventlog_event_id_bytes_max ||
        key_len > eventlog_key_bytes_max || payload_len > eventlog_payload_bytes_max)
        return -1;
    if (self->failed)
        return -1;
    if (self->end_offset >= UINT64_MAX - 1) {
        log_error("eventlog %s: offsets exhausted; refusing to append", self->config.dir);
        return -1; /* the next offset would not fit (and end_offset would wrap) */
    }

    uint64_t total = record_header_bytes + event_id_len + key_len + payload_len;
    segment_t *active = active_segment(self);
    if (active->bytes > 0 && active->bytes + total > self->config.segment_bytes_max) {
        if (segment_roll(self) != 0)
            return -1;
        active = active_segment(self);
    }

    record_header_t h = {
        .length = (uint32_t)(total - record_checked_offset),
        .offset = self->end_offset,
        .timestamp_ms = timestamp_ms,
        .event_id_len = (uint16_t)event_id_len,
        .key_len = (uint16_t)key_len,
        .payload_len = (uint32_t)payload_len,
    };
    assert(record_header_bytes_total(&h) == total);
    uint8_t head[record_header_bytes];
    record_header_encode(&h, head);
    uint32_t crc = eventlog_crc32c(0, head + record_checked_offset, record_checked_header_bytes);
    crc = eventlog_crc32c(crc, event_id, event_id_len);
    crc = eventlog_crc32c(crc, key, key_len);
    crc = eventlog_crc32c(crc, payload, payload_len);
    put_u32(head + 4, crc);

    /* One write of the whole record at the end of the segment (pwritev: the
     * parts are gathered by the kernel, no copy into a record buffer). */
    struct iovec iov[4] = {
        {.iov_base = head, .iov_len = sizeof head},
        {.iov_base = (void *)event_id, .iov_len = event_id_len},
        {.iov_base = (void *)key, .iov_len = key_len},
        {.iov_base = (void *)payload, .iov_len = payload_len},
    };
    if (active->bytes + total > self->active_allocated)
        segment_preallocate(self, active->bytes + total);
    if (io_all_at(self->active_fd, iov, 4, active->bytes, true) != 0) {
        int saved = errno;
        log_error("eventlog %s: write at offset %" PRIu64 ": %s", self->dir, h.offset,
                  strerror(saved));
        /* Cut what may have been written (and the preallocated space); the
         * next append would overwrite it anyway, as it writes at
         * active->bytes. */
        if (ftruncate(self->active_fd, (off_t)active->bytes) != 0)
            eventlog_fail(self, "truncating a failed write");
        self->active_allocated = active->bytes;
        return -1;
    }
    active->bytes += total;
    if (active->bytes > self->active_allocated)
        self->active_allocated = active->bytes; /* not preallocated: the write grew the file */
    self->bytes_total += total;
    if (timestamp_ms > active->newest_timestamp_ms)
        active->newest_timestamp_ms = timestamp_ms;
    self->end_offset++;
    index_note(active, self->end_offset, active->bytes);
    if (offset != NULL)
        *offset = h.offset;
    return 0;
}

int eventlog_sync_begin(eventlog_t *self, eventlog_sync_job_t *job)
{
    assert(self != NULL && job != NULL);
    *job = (eventlog_sync_job_t){.data_fd = -1, .dir_fd = -1};
    if (self->failed)
        return -1;
    segment_t *active = active_segment(self);
    job->segment_base = active->base;
    job->active_bytes = active->bytes;
    job->end_offset = self->end_offset;
    if (active->bytes != self->active_durable_bytes) {
        job->data_fd = fcntl(self->active_fd, F_DUPFD_CLOEXEC, 0);
        if (job->data_fd < 0) {
            eventlog_fail(self, "dup of the active segment");
            return -1;
        }
    }
    if (self->dir_dirty) {
        job->dir_fd_used = true;
        job->dir_fd = fcntl(self->dir_fd, F_DUPFD_CLOEXEC, 0);
        if (job->dir_fd < 0) {
            if (job->data_fd >= 0)
                close(job->data_fd);
            job->data_fd = -1;
            eventlog_fail(self, "dup of the directory");
            return -1;
        }
        /* dir_dirty stays set until the job ends: a roll-over meanwhile
         * must still sync the directory itself before it calls its closed
         * segment durable. */
        job->dir_changes = self->dir_changes;
    }
    return 0;
}

int eventlog_sync_run(eventlog_sync_job_t *job)
{
    int rc = 0;
    int saved = 0;
    if (job->data_fd >= 0) {
        if (fdatasync(job->data_fd) != 0) {
            rc = -1;
            saved = errno;
        }
        close(job->data_fd);
        job->data_fd = -1;
    }
    if (job->dir_fd >= 0) {
        if (rc == 0 && fsync(job->dir_fd) != 0) {
            rc = -1;
            saved = errno;
        }
        close(job->dir_fd);
        job->dir_fd = -1;
    }
    job->rc = rc;
    job->error = saved;
    errno = saved;
    return rc;
}

int eventlog_sync_end(eventlog_t *self, const eventlog_sync_job_t *job)
{
    assert(self != NULL && job != NULL);
    if (self->failed)
        return -1;
    if (job->rc != 0) {
        errno = job->error;
        eventlog_fail(self, "fdatasync");
        return -1;
    }
    if (job->dir_fd_used && self->dir_changes == job->dir_changes)
        self->dir_dirty = false; /* no segment was created since the job began */
    segment_t *active = active_segment(self);
    /* After a roll-over the old segment was synced whole by the roll, and
     * the new one's durable bytes start from 0: the job says nothing of it. */
    if (active->base == job->segment_base && job->active_bytes > self->active_durable_bytes)
        self->active_durable_bytes = job->active_bytes;
    if (job->end_offset > self->durable_end_offset)
        self->durable_end_offset = job->end_offset;
    return 0;
}

/* The same as begin + run + end, without the dup()s and close()s a job
 * needs (two system calls fewer per sync): the broker calls this on its
 * loop thread for every sync it does not hand to its sync thread. */
int eventlog_sync(eventlog_t *self)
{
    assert(self != NULL);
    if (self->failed)
        return -1;
    segment_t *active = active_segment(self);
    if (active->bytes != self->active_durable_bytes && fdatasync(self->active_fd) != 0) {
        eventlog_fail(self, "fdatasync");
        return -1;
    }
    if (self->dir_dirty && fsync(self->dir_fd) != 0) {
        eventlog_fail(self, "fsync of the directory");
        return -1;
    }
    self->dir_dirty = false;
    self->active_durable_bytes = active->bytes;
    self->durable_end_offset = self->end_offset;
    return 0;
}

/* ---- offsets, seek and read ------------------------------------------------- */

uint64_t eventlog_start_offset(const eventlog_t *self)
{
    assert(self != NULL && self->segment_count > 0);
    return self->segments[0].base;
}

uint64_t eventlog_end_offset(const eventlog_t *self)
{
    assert(self != NULL);
    return self->end_offset;
}

uint64_t eventlog_durable_end_offset(const eventlog_t *self)
{
    assert(self != NULL);
    return self->durable_end_offset;
}

uint64_t eventlog_bytes(const eventlog_t *self)
{
    assert(self != NULL);
    return self->bytes_total;
}

int eventlog_seek(eventlog_t *self, uint64_t offset, eventlog_position_t *position)
{
    assert(self != NULL && position != NULL);
    if (offset < eventlog_start_offset(self) || offset >= self->end_offset)
        return -1;
    size_t i = segment_find_offset(self, offset);
    int fd = segment_fd(self, i);
    if (fd < 0 || index_acquire(self, i) != 0)
        return -1;
    segment_t *s = &self->segments[i];
    uint64_t k = (offset - s->base) / index_stride_records;
    if (k >= s->index_len)
        k = s->index_len - 1;
    uint64_t at = s->base + k * index_stride_records;
    uint64_t pos = s->index[k];
    scanner_t scanner = {.fd = fd, .file_bytes = s->bytes, .buffer = self->scan_buffer};
    for (;;) {
        record_header_t h;
        uint64_t total = 0;
        /* headers only: read checks the checksum of the record it serves */
        scan_result_t result = scan_record(&scanner, pos, at, false, &h, &total);
        if (result != SCAN_OK) {
            log_warn("eventlog %s: seeking offset %" PRIu64 " in segment %" PRIu64
                     ": %s at byte %" PRIu64 " (offset %" PRIu64 ")",
                     self->dir, offset, s->base, scan_result_text(result), pos, at);
            return -1;
        }
        if (at == offset)
            break;
        pos += total;
        at++;
        index_note(s, at, pos);
    }
    position->segment_base = s->base;
    position->file_offset = pos;
    return 0;
}

/* Frees what 'out' holds and leaves it empty but for its position. */
static void entry_reset(eventlog_entry_t *out, eventlog_position_t position)
{
    eventlog_entry_clear(out);
    out->position = position;
    out->next_position = position;
}

/* A record found by record_fetch: where it is and its first bytes. */
typedef struct {
    eventlog_position_t position; /* of the record (the next segment's start for a segment end) */
    size_t segment_index;
    bool active; /* in the active segment */
    int fd;
    record_header_t header;
    uint8_t head[read_ahead_bytes]; /* the record's first bytes, header included */
    size_t head_len;                /* bytes in 'head': min(record, read_ahead_bytes) */
} fetched_record_t;

/* What eventlog_read and eventlog_peek share: finds the durable record at
 * 'position' (continuing with the next segment at the end of an older
 * one), reads its first bytes (header, event id, key and a small payload:
 * usually the whole record, with one system call) into 'r' and checks its
 * header (lengths, offset, the record within the durable bytes; not the
 * checksum). Returns 1, 0 at the end of the durable log (r->position set),
 * or -1 as eventlog_read (logged). */
static int record_fetch(eventlog_t *self, eventlog_position_t position, fetched_record_t *r)
{
    r->position = position;
    ptrdiff_t found = segment_find_base(self, position.segment_base);
    if (found < 0)
        return -1; /* not retained (or never a segment) */
    size_t i = (size_t)found;
    /* A position at the end of an older segment continues with the next. */
    while (i + 1 < self->segment_count && position.file_offset == self->segments[i].bytes) {
        i++;
        position = (eventlog_position_t){.segment_base = self->segments[i].base};
    }
    r->position = position;
    r->segment_index = i;
    segment_t *s = &self->segments[i];
    r->active = i + 1 == self->segment_count;
    /* Only durable bytes are served: in the active segment, up to the last
     * sync; older segments were made durable when they were closed. */
    uint64_t limit = r->active ? self->active_durable_bytes : s->bytes;
    if (r->active && position.file_offset >= limit && position.file_offset <= s->bytes)
        return 0;
    if (position.file_offset > limit || limit - position.file_offset < record_header_bytes)
        return -1;

    r->fd = segment_fd(self, i);
    if (r->fd < 0)
        return -1;
    /* Every byte up to 'limit' is in the file: a short read is an error. */
    uint64_t available = limit - position.file_offset;
    r->head_len = available < read_ahead_bytes ? (size_t)available : read_ahead_bytes;
    struct iovec head_iov = {.iov_base = r->head, .iov_len = r->head_len};
    if (io_all_at(r->fd, &head_iov, 1, position.file_offset, false) != 0) {
        log_error("eventlog %s: reading segment %" PRIu64 " at byte %" PRIu64 ": %s", self->dir,
                  s->base, position.file_offset, errno ? strerror(errno) : "end of file");
        return -1;
    }
    record_header_t *h = &r->header;
    record_header_decode(r->head, h);
    uint64_t total = record_header_bytes_total(h);
    uint64_t offset_end = r->active ? self->end_offset : self->segments[i + 1].base;
    const char *bad = NULL;
    if (total == 0)
        bad = "bad length";
    else if (total > available)
        bad = "record past the end of the segment";
    else if (h->offset < s->base || h->offset >= offset_end ||
             (position.file_offset == 0 && h->offset != s->base))
        bad = "offset outside the segment";
    if (bad != NULL) {
        log_warn("eventlog %s: segment %" PRIu64 " byte %" PRIu64 ": %s: not served", self->dir,
                 s->base, position.file_offset, bad);
        return -1;
    }
    return 1;
}

/* The position of the record after 'r' (the start of the next segment
 * after the last record of an older one). */
static eventlog_position_t record_next_position(const eventlog_t *self, const fetched_record_t *r)
{
    const segment_t *s = &self->segments[r->segment_index];
    uint64_t next = r->position.file_offset + record_header_bytes_total(&r->header);
    if (!r->active && next == s->bytes)
        return (eventlog_position_t){.segment_base = self->segments[r->segment_index + 1].base};
    return (eventlog_position_t){.segment_base = s->base, .file_offset = next};
}

int eventlog_read(eventlog_t *self, eventlog_position_t position, eventlog_entry_t *out)
{
    assert(self != NULL && out != NULL);
    memset(out, 0, sizeof *out);
    out->position = out->next_position = position;
    fetched_record_t r;
    int rc = record_fetch(self, position, &r);
    out->position = out->next_position = r.position;
    if (rc != 1)
        return rc;
    const record_header_t *h = &r.header;
    segment_t *s = &self->segments[r.segment_index];

    /* The lengths are checked: at most the limits are allocated. */
    out->event_id = malloc((size_t)h->event_id_len + 1);
    out->key = malloc((size_t)h->key_len + 1);
    out->payload = malloc(h->payload_len > 0 ? h->payload_len : 1);
    if (out->event_id == NULL || out->key == NULL || out->payload == NULL) {
        log_error("eventlog %s: out of memory reading offset %" PRIu64, self->dir, h->offset);
        entry_reset(out, r.position);
        return -1;
    }
    /* The three strings follow the header: copy what the first read got,
     * read the rest (a large payload) straight into place. */
    struct iovec iov[3] = {
        {.iov_base = out->event_id, .iov_len = h->event_id_len},
        {.iov_base = out->key, .iov_len = h->key_len},
        {.iov_base = out->payload, .iov_len = h->payload_len},
    };
    size_t have = r.head_len - record_header_bytes;
    const uint8_t *from = r.head + record_header_bytes;
    int first_missing = 0;
    for (; first_missing < 3 && have > 0; first_missing++) {
        size_t n = iov[first_missing].iov_len < have ? iov[first_missing].iov_len : have;
        memcpy(iov[first_missing].iov_base, from, n);
        from += n;
        have -= n;
        iov[first_missing].iov_base = (uint8_t *)iov[first_missing].iov_base + n;
        iov[first_missing].iov_len -= n;
        if (iov[first_missing].iov_len > 0)
            break; /* the first read ended inside this part */
    }
    if (first_missing < 3 && io_all_at(r.fd, iov + first_missing, 3 - first_missing,
                                       r.position.file_offset + r.head_len, false) != 0) {
        log_error("eventlog %s: reading offset %" PRIu64 ": %s", self->dir, h->offset,
                  errno ? strerror(errno) : "end of file");
        entry_reset(out, r.position);
        return -1;
    }
    uint32_t crc = eventlog_crc32c(0, r.head + record_checked_offset, record_checked_header_bytes);
    crc = eventlog_crc32c(crc, out->event_id, h->event_id_len);
    crc = eventlog_crc32c(crc, out->key, h->key_len);
    crc = eventlog_crc32c(crc, out->payload, h->payload_len);
    if (crc != h->crc) {
        log_warn("eventlog %s: offset %" PRIu64 " (segment %" PRIu64 " byte %" PRIu64
                 "): checksum mismatch: not served",
                 self->dir, h->offset, s->base, r.position.file_offset);
        entry_reset(out, r.position);
        return -1;
    }
    out->event_id[h->event_id_len] = '\0';
    out->key[h->key_len] = '\0';
    out->payload_len = h->payload_len;
    out->offset = h->offset;
    out->timestamp_ms = h->timestamp_ms;
    out->next_position = record_next_position(self, &r);
    return 1;
}

int eventlog_peek(eventlog_t *self, eventlog_position_t position, eventlog_peek_t *out)
{
    assert(self != NULL && out != NULL);
    memset(out, 0, sizeof *out);
    out->position = out->next_position = position;
    fetched_record_t r;
    int rc = record_fetch(self, position, &r);
    out->position = out->next_position = r.position;
    if (rc != 1)
        return rc;
    const record_header_t *h = &r.header;
    /* header + id + key <= 32 + 128 + 256 bytes: within the first read. */
    static_assert(read_ahead_bytes >=
                      record_header_bytes + eventlog_event_id_bytes_max + eventlog_key_bytes_max,
                  "the first read of a record holds its key");
    assert(r.head_len >= record_header_bytes + (size_t)h->event_id_len + h->key_len);
    memcpy(out->key, r.head + record_header_bytes + h->event_id_len, h->key_len);
    out->key[h->key_len] = '\0';
    out->offset = h->offset;
    out->next_position = record_next_position(self, &r);
    return 1;
}

void eventlog_entry_clear(eventlog_entry_t *entry)
{
    if (entry == NULL)
        return;
    free(entry->event_id);
    free(entry->key);
    free(entry->payload);
    entry->event_id = NULL;
    entry->key = NULL;
    entry->payload = NULL;
    entry->payload_len = 0;
}

/* ---- retention -------------------------------------------------------------- */

int eventlog_apply_retention(eventlog_t *self, int64_t now_ms)
{
    assert(self != NULL);
    int64_t cutoff_ms = INT64_MIN;
    if (self->config.retention_ms > 0 &&
        __builtin_sub_overflow(now_ms, self->config.retention_ms, &cutoff_ms))
        cutoff_ms = INT64_MIN;
    size_t deleted = 0;
    while (self->segment_count - deleted > 1) { /* never the active segment */
        segment_t *s = &self->segments[deleted];
        bool too_big =
            self->config.retention_bytes > 0 && self->bytes_total > self->config.retention_bytes;
        bool too_old = self->config.retention_ms > 0 && s->newest_timestamp_ms < cutoff_ms;
        if (!too_big && !too_old)
            break;
        char name[segment_name_bytes_max];
        segment_name(s->base, name);
        read_fd_forget(self, s->base);
        if (unlinkat(self->dir_fd, name, 0) != 0 && errno != ENOENT) {
            log_error("eventlog %s: deleting %s: %s", self->dir, name, strerror(errno));
            break;
        }
        if (s->index != NULL) {
            free(s->index);
            s->index = NULL;
            self->indexed_count--;
        }
        assert(self->bytes_total >= s->bytes);
        self->bytes_total -= s->bytes;
        deleted++;
    }
    if (deleted == 0)
        return 0;
    memmove(self->segments, self->segments + deleted,
            (self->segment_count - deleted) * sizeof *self->segments);
    self->segment_count -= deleted;
    /* Not needed for safety (a deletion lost in a crash only keeps a
     * segment longer), but keeps the start offset stable over a restart. */
    if (fsync(self->dir_fd) != 0)
        log_warn("eventlog %s: fsync after retention: %s", self->dir, strerror(errno));
    log_info("eventlog %s: retention deleted %zu segment(s); offsets now %" PRIu64 "..%" PRIu64
             ", %" PRIu64 " bytes",
             self->dir, deleted, eventlog_start_offset(self), self->end_offset, self->bytes_total);
    return (int)deleted;
}
