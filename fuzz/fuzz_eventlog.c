/*
 * fuzz_eventlog: libFuzzer target for the event log's record reader and
 * recovery (broker/eventlog.c): whatever bytes are on disk, opening the
 * log recovers it, and seek and read serve only records whose checksum
 * matches.
 *
 * Input layout (fuzz/corpus/eventlog/ holds segments eventlog_append()
 * wrote):
 *
 *   plain:  the bytes of segment file "00000000000000000000.log"
 *   "SEGS": up to 4 segment files, each: u64 base (little-endian; the
 *           file is "<base, 20 digits>.log"), u16 length, bytes (a length
 *           past the end takes what is left). A base given twice: the
 *           later file wins. The last segment is the active one. "SEGS"
 *           alone: an empty directory.
 *
 * (A plain segment never starts with "SEGS": as its first record's length
 * field that is 0x53474553, far over the largest valid record.)
 *
 * Each input gets a fresh directory (under /dev/shm when there is one, so
 * fsync costs nothing), then:
 *
 *   1. eventlog_open() recovers it;
 *   2. every offset of every segment (at most 256 per segment) is sought
 *      and read, the whole log is read in order from its start offset, and
 *      a read is tried at every byte position (at most 256 per segment);
 *   3. twelve records are appended (the segment size limit is small, so
 *      appending rolls over, and reading them back spans more segments
 *      than the log keeps indexes and file descriptors for), synced, and
 *      read back;
 *   4. the log is closed, opened again (a second recovery), must have the
 *      same offsets, and serves the appended records; retention then
 *      deletes every older segment, and what remains still reads.
 *
 * What every input must satisfy (else the target aborts: a finding):
 *   - no crash, leak (memory or file descriptor), out-of-bounds access or
 *     undefined behaviour;
 *   - every record served (read returns 1) is a valid record of the file
 *     as it was written here: its CRC-32C, recomputed here independently,
 *     matches, and event id, key and payload are the bytes in the file;
 *   - offsets are coherent: start <= durable end == end after open; the
 *     active segment, recovered, serves every offset in it; a seek lands
 *     on the record with that offset; read in order, the active segment's
 *     offsets follow one another, and a record's offset is within its
 *     segment's range;
 *   - appended and synced records are served, identical, before and after
 *     reopening.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eventlog.h"
#include "log/log.h"

enum {
    segments_max = 4,
    record_header_bytes = 32,
    offsets_per_segment_max = 256,
    positions_per_segment_max = 256,
    in_order_reads_max = 2048,
    appended_records = 12,
    segment_bytes_max = 512, /* appending rolls over soon */
};

/* One segment file as written by this target, before the log touched it. */
typedef struct {
    uint64_t base;
    const uint8_t *bytes;
    size_t len;
} segment_file_t;

/* The input, parsed: the segment files, sorted by base, bases unique. */
typedef struct {
    segment_file_t files[segments_max];
    size_t count;
} layout_t;

static char root_dir[256]; /* made once; each input's log is "<root>/log" */
static char log_dir[300];

/* Stops the run with 'what' when 'ok' is false: libFuzzer records the
 * input as a crash. */
static void require(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_eventlog: invariant broken: %s\n", what);
        abort();
    }
}

/* Removes the log directory and every file in it. */
static void remove_log_dir(void)
{
    DIR *dir = opendir(log_dir);
    if (dir == NULL)
        return;
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        if (strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0)
            unlinkat(dirfd(dir), d->d_name, 0);
    }
    closedir(dir);
    rmdir(log_dir);
}

static void remove_root_dir(void)
{
    remove_log_dir();
    rmdir(root_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Bad bytes on disk are logged as warnings on every input: keep only
     * errors, unless the caller asked for a level. */
    setenv("PAYGATE_LOG_LEVEL", "error", 0);
    require(log_init("fuzz_eventlog"), "PAYGATE_LOG_LEVEL is a level");
    struct stat st;
    const char *parent =
        stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
            ? "/dev/shm"
            : (getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    snprintf(root_dir, sizeof root_dir, "%s/paygate-fuzz-eventlog-XXXXXX", parent);
    require(mkdtemp(root_dir) != NULL, "mkdtemp");
    snprintf(log_dir, sizeof log_dir, "%s/log", root_dir);
    atexit(remove_root_dir);
    return 0;
}

/* ---- the input ------------------------------------------------------------ */

static uint64_t get_le(const uint8_t *p, size_t bytes)
{
    uint64_t v = 0;
    for (size_t i = bytes; i > 0; i--)
        v = v << 8 | p[i - 1];
    return v;
}

static int file_compare(const void *a, const void *b)
{
    uint64_t x = ((const segment_file_t *)a)->base, y = ((const segment_file_t *)b)->base;
    return (x > y) - (x < y);
}

/* Parses the input into 'layout' by the layout above. */
static void parse_layout(const uint8_t *data, size_t size, layout_t *layout)
{
    layout->count = 0;
    if (size < 4 || memcmp(data, "SEGS", 4) != 0) {
        layout->files[layout->count++] = (segment_file_t){0, data, size};
        return;
    }
    size_t at = 4;
    while (layout->count < segments_max && size - at >= 10) {
        uint64_t base = get_le(data + at, 8);
        size_t len = (size_t)get_le(data + at + 8, 2);
        at += 10;
        if (len > size - at)
            len = size - at;
        segment_file_t file = {base, data + at, len};
        at += len;
        size_t k = 0;
        while (k < layout->count && layout->files[k].base != base)
            k++;
        layout->files[k] = file; /* the later file wins */
        if (k == layout->count)
            layout->count++;
    }
    qsort(layout->files, layout->count, sizeof layout->files[0], file_compare);
}

/* Writes the segment files of 'layout' into a fresh log directory. */
static void write_layout(const layout_t *layout)
{
    remove_log_dir();
    require(mkdir(log_dir, 0750) == 0, "mkdir of the log directory");
    for (size_t i = 0; i < layout->count; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/%020" PRIu64 ".log", log_dir, layout->files[i].base);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        require(fd >= 0, "creating a segment file");
        size_t done = 0;
        while (done < layout->files[i].len) {
            ssize_t n = write(fd, layout->files[i].bytes + done, layout->files[i].len - done);
            require(n > 0, "writing a segment file");
            done += (size_t)n;
        }
        close(fd);
    }
}

/* The file of 'layout' named 'base', or NULL. */
static const segment_file_t *layout_file(const layout_t *layout, uint64_t base)
{
    for (size_t i = 0; i < layout->count; i++)
        if (layout->files[i].base == base)
            return &layout->files[i];
    return NULL;
}

/* ---- the oracle: a record served must be valid in the file written --------- */

/* CRC-32C, bitwise: an implementation of its own, so that a bug in the
 * log's table cannot hide itself. */
static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Checks that 'entry', served from 'file' at entry->position, is a valid
 * record there: within the file, lengths consistent, CRC matching, and its
 * fields the file's bytes. */
static void check_served(const segment_file_t *file, const eventlog_entry_t *entry)
{
    require(file != NULL, "a record is served only from a segment file");
    uint64_t pos = entry->position.file_offset;
    require(pos <= file->len && file->len - pos >= record_header_bytes,
            "a served record's header lies within the file");
    const uint8_t *h = file->bytes + pos;
    uint32_t length = (uint32_t)get_le(h, 4);
    uint32_t crc = (uint32_t)get_le(h + 4, 4);
    uint64_t offset = get_le(h + 8, 8);
    int64_t timestamp_ms = (int64_t)get_le(h + 16, 8);
    size_t id_len = (size_t)get_le(h + 24, 2);
    size_t key_len = (size_t)get_le(h + 26, 2);
    size_t payload_len = (size_t)get_le(h + 28, 4);
    size_t body = id_len + key_len + payload_len;
    require(length == 24 + body, "a served record's length field matches its parts");
    require(id_len >= 1 && id_len <= eventlog_event_id_bytes_max &&
                key_len <= eventlog_key_bytes_max && payload_len <= eventlog_payload_bytes_max,
            "a served record's lengths are within the limits");
    require(file->len - pos - record_header_bytes >= body, "a served record lies within the file");
    require(crc32c_bitwise(0, h + 8, 24 + body) == crc, "a served record's CRC-32C matches");
    const uint8_t *id = h + record_header_bytes;
    require(entry->offset == offset && entry->timestamp_ms == timestamp_ms,
            "a served record's offset and timestamp are the file's");
    /* (A NUL inside is possible: no append writes one, but a record with
     * a matching CRC may still hold one; the entry is then cut short as a
     * C string, and its bytes are still the file's.) */
    require(memcmp(entry->event_id, id, id_len) == 0 && entry->event_id[id_len] == '\0',
            "a served record's event id is the file's");
    require(memcmp(entry->key, id + id_len, key_len) == 0 && entry->key[key_len] == '\0',
            "a served record's key is the file's");
    require(
        entry->payload_len == payload_len &&
            (payload_len == 0 || memcmp(entry->payload, id + id_len + key_len, payload_len) == 0),
        "a served record's payload is the file's");
    require(entry->next_position.segment_base != entry->position.segment_base ||
                entry->next_position.file_offset == pos + record_header_bytes + body,
            "the next position follows the record");
}

/* ---- steps ------------------------------------------------------------------ */

/* Opens the log with a small segment size and 'retention_bytes'. */
static eventlog_t *open_log(uint64_t retention_bytes)
{
    eventlog_config_t config = {
        .dir = log_dir, .segment_bytes_max = segment_bytes_max, .retention_bytes = retention_bytes};
    return eventlog_open(&config);
}

/* Checks 'entry', served from the log written from 'layout': a valid
 * record of its file, whose offset belongs to its segment (the base for
 * the first record, below the next segment's base). */
static void check_served_from(const layout_t *layout, const eventlog_entry_t *entry)
{
    const segment_file_t *file = layout_file(layout, entry->position.segment_base);
    check_served(file, entry);
    const segment_file_t *next = file + 1 < layout->files + layout->count ? file + 1 : NULL;
    require(entry->offset >= file->base && (next == NULL || entry->offset < next->base),
            "a served record's offset belongs to its segment");
    require(entry->position.file_offset != 0 || entry->offset == file->base,
            "a segment's first record has the segment's base offset");
}

/* Step 2 for the log as recovered from 'layout'. */
static void read_everything(eventlog_t *log, const layout_t *layout)
{
    uint64_t start = eventlog_start_offset(log);
    uint64_t end = eventlog_end_offset(log);
    if (layout->count == 0) {
        require(start == 0 && end == 0, "an empty directory opens as an empty log");
        return;
    }
    uint64_t active_base = layout->files[layout->count - 1].base;
    require(start == layout->files[0].base, "the start offset is the first segment's base");
    require(eventlog_durable_end_offset(log) == end, "after open every record is durable");
    require(end >= active_base, "the end offset is not before the active segment");

    /* Every offset of every segment, sought and read. */
    for (size_t i = 0; i < layout->count; i++) {
        uint64_t from = layout->files[i].base;
        uint64_t to = i + 1 < layout->count ? layout->files[i + 1].base : end;
        for (uint64_t n = 0; n < offsets_per_segment_max && from + n < to; n++) {
            uint64_t offset = from + n;
            bool active = i + 1 == layout->count;
            eventlog_position_t position;
            int sought = eventlog_seek(log, offset, &position);
            require(sought == 0 || !active, "the active segment's offsets are all found");
            if (sought != 0)
                continue;
            require(position.segment_base == from, "seek lands in the segment of the offset");
            eventlog_entry_t entry;
            int r = eventlog_read(log, position, &entry);
            require(r == 1 || (!active && r == -1), "the active segment's records all read");
            if (r == 1) {
                check_served_from(layout, &entry);
                require(entry.offset == offset, "seek lands on the record with that offset");
            }
            eventlog_entry_clear(&entry);
        }
    }

    /* The whole log in order, from the start. */
    eventlog_position_t position;
    if (start < end && eventlog_seek(log, start, &position) == 0) {
        bool previous_in_active = false;
        uint64_t previous = 0;
        for (int n = 0; n < in_order_reads_max; n++) {
            eventlog_entry_t entry;
            int r = eventlog_read(log, position, &entry);
            if (r == 1) {
                check_served_from(layout, &entry);
                /* Recovery checked the active segment's sequence; reads in
                 * an older one check only that the offset is in its range
                 * (see fuzz/README.md, note N1). */
                bool in_active = entry.position.segment_base == active_base;
                require(!in_active || !previous_in_active || entry.offset == previous + 1,
                        "in the active segment, offsets follow one another");
                previous_in_active = in_active;
                previous = entry.offset;
                position = entry.next_position;
            }
            eventlog_entry_clear(&entry);
            if (r != 1)
                break;
        }
    }

    /* A read at every byte position: whatever is there, only valid
     * records come out. */
    for (size_t i = 0; i < layout->count; i++) {
        const segment_file_t *file = &layout->files[i];
        for (size_t pos = 0; pos <= file->len && pos < positions_per_segment_max; pos++) {
            eventlog_entry_t entry;
            eventlog_position_t at = {.segment_base = file->base, .file_offset = pos};
            if (eventlog_read(log, at, &entry) == 1)
                check_served_from(layout, &entry);
            eventlog_entry_clear(&entry);
        }
    }
}

/* What step 3 appended: offsets and the payload length of each. */
typedef struct {
    uint64_t offsets[appended_records];
    size_t payload_lens[appended_records];
    size_t count;
} appended_t;

/* The event id and payload of appended record 'k'. */
static void appended_content(size_t k, char id[32], uint8_t payload[256], size_t payload_len)
{
    snprintf(id, 32, "fuzz-%zu", k);
    for (size_t i = 0; i < payload_len; i++)
        payload[i] = (uint8_t)(k * 31 + i);
}

/* Reads appended record 'k' back and checks it is what was appended. */
static void check_appended(eventlog_t *log, const appended_t *appended, size_t k)
{
    eventlog_position_t position;
    require(eventlog_seek(log, appended->offsets[k], &position) == 0,
            "an appended record is found");
    eventlog_entry_t entry;
    require(eventlog_read(log, position, &entry) == 1, "an appended, synced record reads");
    char id[32];
    uint8_t payload[256];
    appended_content(k, id, payload, appended->payload_lens[k]);
    require(entry.offset == appended->offsets[k] && strcmp(entry.event_id, id) == 0 &&
                strcmp(entry.key, "key") == 0 && entry.payload_len == appended->payload_lens[k] &&
                (entry.payload_len == 0 || memcmp(entry.payload, payload, entry.payload_len) == 0),
            "an appended record reads back as appended");
    eventlog_entry_clear(&entry);
}

/* Step 3: appends (payload sizes from the input's first bytes), syncs and
 * reads back. */
static void append_some(eventlog_t *log, const uint8_t *data, size_t size, appended_t *appended)
{
    appended->count = 0;
    for (size_t k = 0; k < appended_records; k++) {
        size_t payload_len = size > k ? data[k] : 100;
        char id[32];
        uint8_t payload[256];
        appended_content(k, id, payload, payload_len);
        uint64_t end = eventlog_end_offset(log);
        uint64_t offset = 0;
        if (eventlog_append(log, id, "key", payload, payload_len, 1000 + (int64_t)k, &offset) != 0)
            break; /* a segment named by the next offset may exist already: refused */
        require(offset == end, "an append gets the end offset");
        require(eventlog_end_offset(log) == end + 1, "an append moves the end by one");
        appended->offsets[appended->count] = offset;
        appended->payload_lens[appended->count] = payload_len;
        appended->count++;
    }
    if (appended->count == 0)
        return;
    require(eventlog_sync(log) == 0, "sync after appends");
    require(eventlog_durable_end_offset(log) == eventlog_end_offset(log),
            "after sync every record is durable");
    for (size_t k = 0; k < appended->count; k++)
        check_appended(log, appended, k);
}

/* The lowest free file descriptor number: it grows when fds leak. */
static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    require(fd >= 0, "open /dev/null");
    close(fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd_mark = lowest_free_fd();
    layout_t layout;
    parse_layout(data, size, &layout);
    write_layout(&layout);

    eventlog_t *log = open_log(0);
    require(log != NULL, "eventlog_open recovers any bytes");
    read_everything(log, &layout);
    appended_t appended;
    append_some(log, data, size, &appended);
    uint64_t start = eventlog_start_offset(log);
    uint64_t end = eventlog_end_offset(log);
    eventlog_close(&log);
    require(log == NULL, "eventlog_close sets the pointer to NULL");

    /* Reopened (a second recovery) with retention of at most 1 byte: only
     * the active segment may stay once retention runs. */
    log = open_log(1);
    require(log != NULL, "a log reopens");
    require(eventlog_start_offset(log) == start && eventlog_end_offset(log) == end,
            "reopened, the same offsets");
    for (size_t k = 0; k < appended.count; k++)
        check_appended(log, &appended, k);
    eventlog_apply_retention(log, 0);
    uint64_t kept = eventlog_start_offset(log);
    require(kept >= start && eventlog_end_offset(log) == end,
            "retention moves only the start offset");
    eventlog_position_t position;
    require(kept == start || eventlog_seek(log, start, &position) == -1,
            "a deleted offset is not found");
    for (size_t k = 0; k < appended.count; k++)
        if (appended.offsets[k] >= kept)
            check_appended(log, &appended, k);
    eventlog_close(&log);

    remove_log_dir();
    require(lowest_free_fd() == fd_mark, "no file descriptor leaks");
    return 0;
}
