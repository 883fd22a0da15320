/*
 * machine: what the benchmark needs to know about the machine it runs on.
 *
 * CPU time (the whole machine's, this process's, another process's), the
 * CPU model, free loopback ports, and how long the disk under a directory
 * takes to make a small write durable. Numbers only: this module never
 * decides what is noisy or slow, the benchmark does.
 *
 * Also the two things every report needs: its file, and the facts of its
 * "machine" line.
 */
#ifndef BENCH_MACHINE_H
#define BENCH_MACHINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

enum {
    machine_ports_max = 8,          /* ports one machine_pick_ports call can give */
    machine_fsync_probes_max = 256, /* writes one machine_fsync_probe may time */
};

/* Nanoseconds on the monotonic clock. */
int64_t machine_now_ns(void);

/* CPU microseconds the whole machine has spent busy (not idle, not
 * waiting for I/O) since boot, from /proc/stat; -1 when unreadable. */
int64_t machine_busy_us(void);

/* CPU microseconds (user + system, all threads) used so far by this
 * process; -1 when unknown. */
int64_t machine_self_cpu_us(void);

/* The same for process 'pid' (from /proc/<pid>/stat, clock-tick
 * resolution); -1 when it cannot be read. */
int64_t machine_process_cpu_us(pid_t pid);

/* The CPU model from /proc/cpuinfo into 'out' ("unknown" if not found). */
void machine_cpu_model(char *out, size_t size);

/* Picks 'count' (at most machine_ports_max) distinct free TCP ports on
 * 127.0.0.1 into 'ports'. Another program could take one before our child
 * binds it; the child then fails to start and says so. Returns 0 or -1
 * (after saying why). */
int machine_pick_ports(uint16_t *ports, size_t count);

/* What machine_fsync_probe measured, in milliseconds. */
typedef struct {
    double min_ms;
    double median_ms;
    double max_ms;
    unsigned count;
} machine_fsync_t;

/* Times 'count' (1..machine_fsync_probes_max) appends of 4 KiB, each
 * followed by fdatasync, to a scratch file in 'dir' (removed afterwards):
 * what one durable write costs on that disk. Returns 0, or -1 after
 * saying why. */
int machine_fsync_probe(const char *dir, unsigned count, machine_fsync_t *out);

/* Flush (write-cache) requests completed so far by the disk that holds
 * 'path', from /sys/dev/block/<major>:<minor>/stat (the whole disk's for
 * a partition). Each fdatasync that reaches the disk costs one, so the
 * count over a run says how many events shared one fsync. Counts every
 * process's flushes. -1 when unknown (no block device behind 'path', e.g.
 * tmpfs or overlay, or a kernel without the counter). */
int64_t machine_disk_flushes(const char *path);

/* The file system type under 'path' as a short name ("ext4", "xfs",
 * "tmpfs", "btrfs", "overlay" or "0x<magic>"). A tmpfs makes fsync free,
 * so durability numbers measured there mean nothing. */
void machine_fs_type(const char *path, char *out, size_t size);

/* What a report says of when and where it was measured. */
typedef struct {
    char when[64];   /* now, "YYYY-MM-DD HH:MM UTC" */
    char cpu[128];   /* machine_cpu_model */
    char kernel[65]; /* uname's release, or "unknown" */
    int zmq_major, zmq_minor, zmq_patch;
} machine_facts_t;

/* Fills 'out' with the facts of this machine, now. */
void machine_facts(machine_facts_t *out);

/* Creates 'dir' if it is missing and opens 'dir'/'name' for writing
 * (truncated). NULL after saying why on stderr. */
FILE *machine_report_open(const char *dir, const char *name);

#endif
