/*
 * child: starting and stopping the benchmark's processes. See child.h.
 */
#include "child.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { child_environ_max = 4096, child_poll_step_ms = 10 };

/* Sleeps 'ms' milliseconds (restarting after signals). */
static void child_sleep_ms(long ms)
{
    struct timespec left = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

/* True when "KEY=..." 'entry' has the same key as "KEY=..." 'other'. */
static bool child_same_key(const char *entry, const char *other)
{
    const char *eq = strchr(other, '=');
    size_t key_len = eq != NULL ? (size_t)(eq - other) : strlen(other);
    return strncmp(entry, other, key_len) == 0 && entry[key_len] == '=';
}

int child_start(child_t *self, const char *name, const char *path, const char *const *args,
                const char *const *env)
{
    memset(self, 0, sizeof *self);
    snprintf(self->name, sizeof self->name, "%s", name);
    if (access(path, X_OK) != 0) {
        fprintf(stderr, "bench: %s: cannot run %s: %s\n", name, path, strerror(errno));
        return -1;
    }

    /* Everything the child needs is built here, before fork: after fork
     * only async-signal-safe calls are made. */
    const char *argv[child_args_max + 2];
    size_t argc = 0;
    argv[argc++] = path;
    for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
        assert(i < child_args_max);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;

    size_t added = 0;
    while (env != NULL && env[added] != NULL)
        added++;
    assert(added <= child_env_max);
    static const char *envp[child_environ_max + child_env_max + 1];
    size_t envc = 0;
    for (char **e = environ; *e != NULL && envc < child_environ_max; e++) {
        bool replaced = false;
        for (size_t i = 0; i < added && !replaced; i++)
            replaced = child_same_key(*e, env[i]);
        if (!replaced)
            envp[envc++] = *e;
    }
    for (size_t i = 0; i < added; i++)
        envp[envc++] = env[i];
    envp[envc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench: %s: fork failed: %s\n", name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Die with the benchmark, even when it is killed with SIGKILL.
         * SIGKILL, not SIGTERM: a worker that drains would wait seconds
         * for a broker that is gone as well. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(STDERR_FILENO, STDOUT_FILENO);
        /* A SIGTERM between fork and exec must stop the child, not run
         * the benchmark's own handler inherited from the parent. */
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        execve(path, (char *const *)argv, (char *const *)envp);
        static const char failed[] = "bench: execve of a child failed\n";
        ssize_t ignored = write(STDERR_FILENO, failed, sizeof failed - 1);
        (void)ignored;
        _exit(127);
    }
    self->pid = pid;
    return 0;
}

bool child_alive(child_t *self)
{
    if (self->pid <= 0)
        return false;
    int status = 0;
    pid_t rc = waitpid(self->pid, &status, WNOHANG);
    if (rc == 0)
        return true;
    if (rc == self->pid) {
        self->exit_status = status;
        if (WIFEXITED(status))
            fprintf(stderr, "bench: %s (pid %d) exited with code %d\n", self->name, (int)self->pid,
                    WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
            fprintf(stderr, "bench: %s (pid %d) ended by signal %d\n", self->name, (int)self->pid,
                    WTERMSIG(status));
    }
    self->pid = 0;
    return false;
}

int64_t child_cpu_us(const child_t *self)
{
    if (self->pid <= 0)
        return -1;
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)self->pid);
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

void child_stop(child_t *self)
{
    if (self->pid <= 0)
        return;
    pid_t pid = self->pid;
    if (kill(pid, SIGTERM) != 0) {
        child_alive(self);
        return;
    }
    for (long waited = 0; waited < child_stop_grace_ms; waited += child_poll_step_ms) {
        int status = 0;
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid || rc < 0) {
            self->exit_status = status;
            self->pid = 0;
            return;
        }
        child_sleep_ms(child_poll_step_ms);
    }
    fprintf(stderr, "bench: %s (pid %d) ignored SIGTERM for %d ms; sending SIGKILL\n", self->name,
            (int)pid, (int)child_stop_grace_ms);
    kill(pid, SIGKILL);
    waitpid(pid, &self->exit_status, 0);
    self->pid = 0;
}

const char *child_broker_key_env(void)
{
    static char env[1200];
    const char *dir = getenv("PAYGATE_TEST_CERTS_DIR");
    if (dir == NULL || *dir == '\0')
        return "PAYGATE_BENCH_PLAINTEXT=1";
    snprintf(env, sizeof env, "PAYGATE_CURVE_CERT=%s/broker.cert_secret", dir);
    return env;
}
