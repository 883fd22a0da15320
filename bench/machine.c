/*
 * machine: facts about the machine the benchmark runs on. See machine.h.
 */
#include "machine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

enum { machine_probe_write_bytes = 4096 };

int64_t machine_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t machine_busy_us(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                       steal = 0;
    int fields = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system,
                        &idle, &iowait, &irq, &softirq, &steal);
    fclose(f);
    long ticks_per_s = sysconf(_SC_CLK_TCK);
    if (fields != 8 || ticks_per_s <= 0)
        return -1;
    unsigned long long busy = user + nice + system + irq + softirq + steal;
    return (int64_t)(busy * 1000000ULL / (unsigned long long)ticks_per_s);
}

int64_t machine_self_cpu_us(void)
{
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0)
        return -1;
    return (int64_t)usage.ru_utime.tv_sec * 1000000 + usage.ru_utime.tv_usec +
           (int64_t)usage.ru_stime.tv_sec * 1000000 + usage.ru_stime.tv_usec;
}

int64_t machine_process_cpu_us(pid_t pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    bool read = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses,
     * so count fields from the last ')'. utime and stime are fields 14
     * and 15 of the line, the 12th and 13th after the ')'. */
    char *rest = read ? strrchr(line, ')') : NULL;
    if (rest == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(rest + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    long ticks_per_s = sysconf(_SC_CLK_TCK);
    if (ticks_per_s <= 0)
        return -1;
    return (int64_t)((utime + stime) * 1000000ULL / (unsigned long long)ticks_per_s);
}

void machine_cpu_model(char *out, size_t size)
{
    snprintf(out, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[256];
    while (fgets(line, sizeof line, f) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            snprintf(out, size, "%s", colon + 2);
            out[strcspn(out, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
}

int machine_pick_ports(uint16_t *ports, size_t count)
{
    if (count > machine_ports_max)
        return -1;
    int fds[machine_ports_max];
    size_t opened = 0;
    int rc = 0;
    /* All held open at once, so that the kernel gives distinct ports. */
    for (; opened < count; opened++) {
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof addr;
        fds[opened] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[opened] < 0 || bind(fds[opened], (struct sockaddr *)&addr, sizeof addr) != 0 ||
            getsockname(fds[opened], (struct sockaddr *)&addr, &len) != 0) {
            fprintf(stderr, "bench: cannot pick a free port: %s\n", strerror(errno));
            rc = -1;
            opened++;
            break;
        }
        ports[opened] = ntohs(addr.sin_port);
    }
    for (size_t i = 0; i < opened; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    return rc;
}

static int machine_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int machine_fsync_probe(const char *dir, unsigned count, machine_fsync_t *out)
{
    memset(out, 0, sizeof *out);
    if (count < 1 || count > machine_fsync_probes_max)
        return -1;
    char path[1100];
    snprintf(path, sizeof path, "%s/fsync-probe", dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "bench: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    static const char block[machine_probe_write_bytes];
    double took_ms[machine_fsync_probes_max];
    int rc = 0;
    for (unsigned i = 0; i < count; i++) {
        int64_t start = machine_now_ns();
        /* An append, like a log record: the file grows, so the size goes
         * to disk with the data (what an event log's fdatasync pays). */
        if (pwrite(fd, block, sizeof block, (off_t)i * (off_t)sizeof block) !=
                (ssize_t)sizeof block ||
            fdatasync(fd) != 0) {
            fprintf(stderr, "bench: fsync probe in %s failed: %s\n", dir, strerror(errno));
            rc = -1;
            break;
        }
        took_ms[i] = (double)(machine_now_ns() - start) / 1e6;
    }
    close(fd);
    unlink(path);
    if (rc != 0)
        return -1;
    qsort(took_ms, count, sizeof took_ms[0], machine_compare_double);
    out->count = count;
    out->min_ms = took_ms[0];
    out->max_ms = took_ms[count - 1];
    out->median_ms =
        count % 2 ? took_ms[count / 2] : (took_ms[count / 2 - 1] + took_ms[count / 2]) / 2.0;
    return 0;
}

void machine_fs_type(const char *path, char *out, size_t size)
{
    struct statfs fs;
    if (statfs(path, &fs) != 0) {
        snprintf(out, size, "unknown");
        return;
    }
    static const struct {
        unsigned long magic;
        const char *name;
    } known[] = {
        {0xEF53, "ext4"},      {0x58465342, "xfs"},     {0x01021994, "tmpfs"},
        {0x9123683E, "btrfs"}, {0x794C7630, "overlay"}, {0x2FC12FC1, "zfs"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if ((unsigned long)fs.f_type == known[i].magic) {
            snprintf(out, size, "%s", known[i].name);
            return;
        }
    }
    snprintf(out, size, "0x%lx", (unsigned long)fs.f_type);
}

int64_t machine_disk_flushes(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    char device[128], resolved[PATH_MAX], stat_path[PATH_MAX + 16];
    snprintf(device, sizeof device, "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
    if (realpath(device, resolved) == NULL)
        return -1;
    /* A partition has no flush count of its own: the disk above it has. */
    snprintf(stat_path, sizeof stat_path, "%s/partition", resolved);
    if (access(stat_path, F_OK) == 0) {
        char *slash = strrchr(resolved, '/');
        if (slash == NULL)
            return -1;
        *slash = '\0';
    }
    snprintf(stat_path, sizeof stat_path, "%s/stat", resolved);
    FILE *f = fopen(stat_path, "r");
    if (f == NULL)
        return -1;
    /* reads (4 fields), writes (4), in flight, io ticks, queue time,
     * discards (4), then flushes completed and flush ticks. */
    unsigned long long field[17];
    int fields = 0;
    while (fields < 17 && fscanf(f, "%llu", &field[fields]) == 1)
        fields++;
    fclose(f);
    return fields >= 16 ? (int64_t)field[15] : -1;
}

void machine_facts(machine_facts_t *out)
{
    time_t now = time(NULL);
    strftime(out->when, sizeof out->when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    machine_cpu_model(out->cpu, sizeof out->cpu);
    struct utsname system;
    snprintf(out->kernel, sizeof out->kernel, "%s",
             uname(&system) == 0 ? system.release : "unknown");
    zmq_version(&out->zmq_major, &out->zmq_minor, &out->zmq_patch);
}

FILE *machine_report_open(const char *dir, const char *name)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench: cannot create %s: %s\n", dir, strerror(errno));
        return NULL;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *out = fopen(path, "w");
    if (out == NULL)
        fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
    return out;
}
