/*
 * eventlog: one topic's append-only, durable log of events on disk.
 *
 * A log is a directory of segment files named by the offset of their first
 * record ("00000000000000000000.log"); records are appended to the last
 * segment, which rolls over at segment_bytes_max. Offsets are dense: the
 * n-th record ever appended has offset n. A record is durable only after
 * eventlog_sync() returned 0; the broker acknowledges a publish only then,
 * and syncs once for all the records appended since the last sync (group
 * commit).
 *
 * Opening a log recovers it: the last segment is scanned and a torn or
 * corrupt tail (bad length, bad checksum, short write) is cut off, so a
 * record that was never fully written is never served. Retention deletes
 * whole segments by age and total size, never the active one.
 *
 * It never holds payloads in memory beyond the record being read: memory
 * is bounded whatever the backlog. It must never abort on bad bytes on disk.
 *
 * Only durable records are served: eventlog_read() stops at the last
 * eventlog_sync() (eventlog_durable_end_offset()), so a consumer never sees
 * an event that a crash could take back (and whose offset would then be
 * given to another event).
 *
 * Retention by age judges a segment by its newest record's timestamp (the
 * largest 'timestamp_ms' appended to it). For segments from before the
 * last open, that is read back from the file's mtime, which the log sets to
 * it (rounded up to a second) when it closes a segment.
 *
 * Not thread-safe: the broker is single-threaded and owns its logs; use a
 * log from one thread at a time.
 *
 * The record layout (all integers little-endian) is drawn in eventlog.c
 * and broker/README.md.
 */
#ifndef PAYGATE_EVENTLOG_H
#define PAYGATE_EVENTLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    eventlog_event_id_bytes_max = 128,
    eventlog_key_bytes_max = 256,
    eventlog_payload_bytes_max = 1024 * 1024,
};

typedef struct {
    const char *dir;            /* the topic's directory; created if missing */
    uint64_t segment_bytes_max; /* roll over past this size (0: 64 MiB; at most 1 GiB) */
    int64_t retention_ms;       /* delete segments whose newest record is older (0: keep) */
    uint64_t retention_bytes;   /* delete oldest segments beyond this total (0: no limit) */
} eventlog_config_t;

/* Where a record lives, to read it again without scanning. */
typedef struct {
    uint64_t segment_base; /* offset of the segment's first record */
    uint64_t file_offset;  /* byte position of the record in that file */
} eventlog_position_t;

/* A record read back. The strings and payload are owned by the entry
 * (free with eventlog_entry_clear). event_id and key are NUL-terminated. */
typedef struct {
    uint64_t offset;
    int64_t timestamp_ms;
    char *event_id;
    char *key;
    uint8_t *payload;
    size_t payload_len;
    eventlog_position_t position;      /* of this record */
    eventlog_position_t next_position; /* of the record after it */
} eventlog_entry_t;

typedef struct eventlog eventlog_t;

/* Opens (creating if needed) and recovers the log in config->dir.
 * Only the last path component is created (the parent must exist).
 * NULL, after logging why, on an I/O error or an invalid config. */
eventlog_t *eventlog_open(const eventlog_config_t *config);

/* Closes the log (syncing nothing) and sets '*self' to NULL. */
void eventlog_close(eventlog_t **self);

/* Appends one record (not yet durable) and sets '*offset' to its offset
 * ('offset' may be NULL). 'event_id' 1..128 bytes, 'key' 0..256 bytes
 * (NULL: empty), payload up to 1 MiB. Returns 0, or -1 on an I/O error or
 * an invalid argument (nothing is written then). After a failed write or
 * fsync the log refuses appends and syncs until it is reopened. */
int eventlog_append(eventlog_t *self, const char *event_id, const char *key, const void *payload,
                    size_t payload_len, int64_t timestamp_ms, uint64_t *offset);

/* Makes every appended record durable (fdatasync of the active segment,
 * and fsync of the directory after a roll-over; a roll-over itself fsyncs
 * the segment it closes). Returns 0, or -1: then no record appended since
 * the last successful sync may be acknowledged, and the log must be
 * reopened (which keeps what really reached the disk). Waits for the
 * disk on the calling thread; cheaper than a job (no descriptors are
 * duplicated). */
int eventlog_sync(eventlog_t *self);

/* eventlog_sync in three steps, so that the slow part (the fdatasync) can
 * run on another thread while the log keeps taking appends:
 *
 *   eventlog_sync_begin   on the log's thread: notes what is to become
 *                         durable and dup()s the descriptors to sync;
 *   eventlog_sync_run     on any thread: fdatasync/fsync, closes the dups;
 *   eventlog_sync_end     on the log's thread: marks the noted records
 *                         durable (or fails the log when the run failed).
 *
 * Records appended after the begin are not covered (they wait for the
 * next sync). A roll-over between begin and end is fine: it syncs the
 * closed segment itself. Only one job per log may be in flight. */
typedef struct {
    int data_fd;           /* dup of the active segment's fd, -1: nothing to sync */
    int dir_fd;            /* dup of the directory's fd, -1: no dir sync needed */
    bool dir_fd_used;      /* the job syncs the directory */
    uint64_t dir_changes;  /* segments created when it began */
    uint64_t segment_base; /* the active segment when the job began */
    uint64_t active_bytes; /* its bytes covered by the job */
    uint64_t end_offset;   /* records before it are durable once the job succeeds */
    int rc;                /* eventlog_sync_run's result */
    int error;             /* its errno when rc is -1 */
} eventlog_sync_job_t;

/* Fills 'job'. Returns 0, or -1 when the log has failed (or a dup failed;
 * the log is then failed). */
int eventlog_sync_begin(eventlog_t *self, eventlog_sync_job_t *job);

/* Runs 'job''s fsyncs and closes its descriptors; sets and returns job->rc
 * (0 or -1 with errno). Touches no eventlog_t: safe on any thread. */
int eventlog_sync_run(eventlog_sync_job_t *job);

/* Applies a finished 'job' to the log: on success its records become
 * durable (served to readers); on failure the log is failed. Returns
 * job->rc. */
int eventlog_sync_end(eventlog_t *self, const eventlog_sync_job_t *job);

/* The offset of the oldest retained record, and one past the newest. */
uint64_t eventlog_start_offset(const eventlog_t *self);
uint64_t eventlog_end_offset(const eventlog_t *self);

/* One past the newest durable record: what eventlog_read() serves up to. */
uint64_t eventlog_durable_end_offset(const eventlog_t *self);

/* The position of the record at 'offset' (start <= offset < end), found
 * from the segment list and a scan within the segment. Returns 0, or -1
 * when the offset is not retained. */
int eventlog_seek(eventlog_t *self, uint64_t offset, eventlog_position_t *position);

/* Reads the record at 'position' into 'out'. Returns 1 with a record, 0 at
 * the end of the durable log (appended but not yet synced records are not
 * served), -1 when the bytes there are not a valid record (never served),
 * when the position's segment is no longer retained (see
 * eventlog_start_offset) or on an I/O error. At the end of a segment it
 * continues with the next one. 'out' is overwritten (clear a previous
 * entry first); on 0 and -1 it holds no data. */
int eventlog_read(eventlog_t *self, eventlog_position_t position, eventlog_entry_t *out);

/* What eventlog_peek tells of a record: enough to walk the log and to
 * order a group's deliveries by key, without the payload. */
typedef struct {
    uint64_t offset;
    char key[eventlog_key_bytes_max + 1]; /* NUL-terminated */
    eventlog_position_t position;         /* of this record */
    eventlog_position_t next_position;    /* of the record after it */
} eventlog_peek_t;

/* Like eventlog_read without the payload and without checking the
 * checksum: the record's offset, key and the next position, with one read
 * and no allocation. Its lengths and offset are checked as for a read; the
 * checksum is not, so a peeked key may be wrong on a corrupt record, which
 * eventlog_read then refuses to serve. Returns 1, 0 at the end of the
 * durable log, -1 as eventlog_read. */
int eventlog_peek(eventlog_t *self, eventlog_position_t position, eventlog_peek_t *out);

/* Frees what 'entry' holds. */
void eventlog_entry_clear(eventlog_entry_t *entry);

/* Deletes segments that retention allows to go, oldest first, stopping at
 * the first one that must stay and never deleting the active one: a
 * segment goes while the log's total bytes (active segment included) are
 * over retention_bytes, or while its newest record's timestamp is older
 * than 'now_ms' - retention_ms. Moves the start offset; positions in
 * deleted segments then read as -1. Returns how many were deleted (a
 * failed unlink is logged and stops the pass). */
int eventlog_apply_retention(eventlog_t *self, int64_t now_ms);

/* Bytes on disk (all segments). */
uint64_t eventlog_bytes(const eventlog_t *self);

/* CRC-32C (Castagnoli) of 'len' bytes at 'data', continuing from 'crc'
 * (start with 0). Exposed for tests and tools. */
uint32_t eventlog_crc32c(uint32_t crc, const void *data, size_t len);

#endif
