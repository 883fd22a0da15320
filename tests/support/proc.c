/*
 * proc: child processes, ports and discovery helpers for integration
 * tests. See proc.h.
 */
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock/clock.h"

/* In the child: with test certificates (PAYGATE_TEST_CERTS_DIR), gives
 * binary 'path' ".../paygate-NAME" its own key, NAME.cert_secret, when the
 * directory has one (the broker gets broker.cert_secret). Without such a
 * certificate the child keeps the test process's (PAYGATE_CURVE_CERT, the
 * "test" key that may do everything). */
static void proc_use_own_cert(const char *path)
{
    const char *dir = getenv("PAYGATE_TEST_CERTS_DIR");
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (dir == NULL || *dir == '\0' || strncmp(base, "paygate-", 8) != 0)
        return;
    char cert[1024];
    snprintf(cert, sizeof cert, "%s/%s.cert_secret", dir, base + 8);
    if (access(cert, R_OK) == 0)
        setenv("PAYGATE_CURVE_CERT", cert, 1);
}

bool proc_start(proc_t *p, const char *name, const char *path, const char *const env[])
{
    return proc_start_args(p, name, path, NULL, env);
}

enum { proc_args_max = 32 }; /* command-line arguments of proc_start_args */

bool proc_start_args(proc_t *p, const char *name, const char *path, const char *const args[],
                     const char *const env[])
{
    char *argv[proc_args_max + 2];
    size_t argc = 0;
    argv[argc++] = (char *)path;
    for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
        if (argc > proc_args_max)
            return false;
        argv[argc++] = (char *)args[i];
    }
    argv[argc] = NULL;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    const char *dir = getenv("PAYGATE_TEST_LOG_DIR");
    snprintf(p->log_path, sizeof p->log_path, "%s/%s.log", dir && *dir ? dir : ".", name);
    int log_fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0)
        return false;
    pid_t pid = fork();
    if (pid < 0) {
        close(log_fd);
        return false;
    }
    if (pid == 0) {
        proc_use_own_cert(path);
        for (size_t i = 0; env != NULL && env[i] != NULL; i++)
            putenv((char *)env[i]);
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0)
            dup2(null_fd, STDIN_FILENO);
        execv(path, argv);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(log_fd);
    p->pid = pid;
    return true;
}

void proc_signal(proc_t *p, int signo)
{
    if (p->pid > 0)
        kill(p->pid, signo);
}

bool proc_wait(proc_t *p, int timeout_ms)
{
    if (p->pid <= 0)
        return true;
    int64_t until = clock_now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(p->pid, &p->exit_status, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            return true;
        }
        if (clock_now_ms() >= until)
            return false;
        sleep_ms(5);
    }
}

void proc_kill(proc_t *p)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &p->exit_status, 0);
    p->pid = 0;
}

bool proc_stop(proc_t *p, int timeout_ms)
{
    if (p->pid <= 0)
        return false;
    kill(p->pid, SIGTERM);
    if (!proc_wait(p, timeout_ms)) {
        proc_kill(p);
        return false;
    }
    return WIFEXITED(p->exit_status) && WEXITSTATUS(p->exit_status) == 0;
}

int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

/* Asks the broker for its service list; NULL when it does not answer. */
static Paygate__V1__ListServicesReply *discovery_list(rpc_client_t *client, const char *service,
                                                      int deadline_ms)
{
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    request.service = (char *)(service ? service : "");
    ProtobufCMessage *reply = NULL;
    rpc_call_opts_t opts = {.deadline_ms = (uint32_t)deadline_ms};
    rpc_status_t status;
    if (rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &reply, &opts,
                        &status) != PAYGATE__V1__CODE__OK)
        return NULL;
    return (Paygate__V1__ListServicesReply *)reply;
}

int discovery_count(rpc_client_t *client, const char *service, int deadline_ms)
{
    Paygate__V1__ListServicesReply *reply = discovery_list(client, service, deadline_ms);
    if (reply == NULL)
        return -1;
    int count = 0;
    for (size_t i = 0; i < reply->n_services; i++) {
        if (strcmp(reply->services[i]->name, service) == 0)
            count = (int)reply->services[i]->n_instances;
    }
    paygate__v1__list_services_reply__free_unpacked(reply, NULL);
    return count;
}

int discovery_wait(rpc_client_t *client, const char *service, int count, int timeout_ms)
{
    int64_t start = clock_now_ms();
    while (clock_now_ms() - start < timeout_ms) {
        if (discovery_count(client, service, 200) == count)
            return (int)(clock_now_ms() - start);
        sleep_ms(20);
    }
    return -1;
}

bool discovery_stats(rpc_client_t *client, Paygate__V1__BrokerStats *stats)
{
    Paygate__V1__ListServicesReply *reply = discovery_list(client, NULL, 1000);
    if (reply == NULL || reply->stats == NULL) {
        if (reply != NULL)
            paygate__v1__list_services_reply__free_unpacked(reply, NULL);
        return false;
    }
    *stats = *reply->stats;
    stats->base.unknown_fields = NULL;
    stats->base.n_unknown_fields = 0;
    paygate__v1__list_services_reply__free_unpacked(reply, NULL);
    return true;
}

void sleep_ms(int ms)
{
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}
