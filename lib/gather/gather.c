/*
 * gather: one process's threads' calls of one kind, made together. See
 * gather.h.
 */
#include "gather.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock/clock.h"
#include "log/log.h"

/* A condition variable on the monotonic clock (for timed waits). */
static void cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

void gather_init(gather_t *g, gather_run_fn run, void *kind)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->lock, NULL);
    cond_init_monotonic(&g->arrived);
    g->tail = &g->head;
    g->run = run;
    g->kind = kind;
}

void gather_destroy(gather_t *g)
{
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->arrived);
}

void gather_then(gather_t *g, gather_t *then, unsigned linger_us)
{
    g->then = then;
    then->linger_us = linger_us;
}

void gather_count_in(gather_t *g, metrics_series_t *calls, metrics_series_t *batches)
{
    g->calls = calls;
    g->batches = batches;
}

/* Forgets the calls expected from the step before when they should have
 * come by now (they took another path, e.g. a payment that failed):
 * gather_expect_horizon lingers after they were announced. Not one
 * linger: the first step's calls come back through the gateway and its
 * clients, a few milliseconds after the last step's run, and forgetting
 * them sooner broke the convoys (./dev bench payments at 8 connections
 * about 550/s instead of 700). g->lock held. */
static void gather_expire(gather_t *g)
{
    if (g->expected > 0 &&
        clock_now_us() - g->expected_at_us > (int64_t)g->linger_us * gather_expect_horizon)
        g->expected = 0;
}

/* As the leader (g->running set, g->lock held): waits up to g's linger
 * for the calls a run of the step before sent this way. */
static void gather_linger(gather_t *g)
{
    gather_expire(g);
    if (g->expected == 0 || g->queued >= gather_batch_max)
        return;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)g->linger_us * 1000;
    while (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    g->lingering = true;
    while (g->expected > 0 && g->queued < gather_batch_max &&
           pthread_cond_timedwait(&g->arrived, &g->lock, &until) == 0) {
    }
    g->lingering = false;
    g->expected = 0; /* whoever did not come took another path */
}

void gather_submit(gather_t *g, void *leader, gather_call_t *call)
{
    cond_init_monotonic(&call->wake);
    call->done = false;
    call->gathered = false;
    call->next = NULL;
    pthread_mutex_lock(&g->lock);
    *g->tail = call;
    g->tail = &call->next;
    g->queued++;
    gather_expire(g);
    if (g->expected > 0)
        g->expected--;
    if (g->lingering)
        pthread_cond_signal(&g->arrived);
    while (!call->done) {
        if (g->running) {
            pthread_cond_wait(&call->wake, &g->lock);
            continue;
        }
        g->running = true; /* lead */
        gather_linger(g);
        gather_call_t *calls[gather_batch_max];
        size_t count = 0;
        while (g->head != NULL && count < gather_batch_max) {
            calls[count++] = g->head;
            g->head = g->head->next;
        }
        if (g->head == NULL)
            g->tail = &g->head;
        g->queued -= count;
        pthread_mutex_unlock(&g->lock);

        g->run(g, leader, calls, count);
        if (count > 1 && calls[0]->gathered) {
            metrics_counter_add(g->calls, count);
            metrics_counter_add(g->batches, 1);
        }
        if (g->then != NULL && count > 1) { /* these are on their way there */
            pthread_mutex_lock(&g->then->lock);
            gather_expire(g->then);
            g->then->expected += (unsigned)count;
            g->then->expected_at_us = clock_now_us();
            pthread_mutex_unlock(&g->then->lock);
        }

        pthread_mutex_lock(&g->lock);
        for (size_t i = 0; i < count; i++) {
            calls[i]->done = true;
            if (calls[i] != call)
                pthread_cond_signal(&calls[i]->wake);
        }
        g->running = false;
        if (g->head != NULL) /* the first queued leads the next run */
            pthread_cond_signal(&g->head->wake);
    }
    pthread_mutex_unlock(&g->lock);
    pthread_cond_destroy(&call->wake);
}

/* ---- calls of a method of another service ------------------------------- */

/* One call of an RPC kind. */
typedef struct {
    const ProtobufCMessage *request;
    const char *user_id;
    const char *request_id;
    const char *order_key;
    Paygate__V1__Code code;
    rpc_status_t status;
    ProtobufCMessage *reply;
} rpc_call_t;

static int by_order_key(const void *a, const void *b)
{
    const rpc_call_t *x = (*(gather_call_t *const *)a)->arg;
    const rpc_call_t *y = (*(gather_call_t *const *)b)->arg;
    return strcmp(x->order_key, y->order_key);
}

/* gather_run_fn of RPC kinds: one call alone, several in one batch. */
static void rpc_run(gather_t *g, void *leader, gather_call_t **calls, size_t count)
{
    const gather_rpc_kind_t *kind = g->kind;
    rpc_client_t *client = leader;
    if (count == 1) {
        rpc_call_t *c = calls[0]->arg;
        rpc_call_opts_t opts = {.deadline_ms = kind->deadline_ms,
                                .request_id = c->request_id,
                                .user_id = c->user_id,
                                .principal = kind->principal};
        c->code = rpc_client_call(client, kind->service, kind->method, c->request, kind->reply_desc,
                                  &c->reply, &opts, &c->status);
        calls[0]->gathered = true;
        return;
    }
    qsort(calls, count, sizeof *calls, by_order_key);
    rpc_batch_item_t items[gather_batch_max];
    for (size_t i = 0; i < count; i++) {
        const rpc_call_t *c = calls[i]->arg;
        items[i] = (rpc_batch_item_t){
            .request = c->request, .user_id = c->user_id, .request_id = c->request_id};
    }
    rpc_call_opts_t opts = {.deadline_ms = kind->deadline_ms, .principal = kind->principal};
    rpc_status_t status;
    Paygate__V1__Code code = rpc_client_call_batch(client, kind->service, kind->method, items,
                                                   count, kind->reply_desc, &opts, &status);
    if (code == PAYGATE__V1__CODE__UNIMPLEMENTED) {
        log_info("gather: %s.%s takes no batches; calling it once per call", kind->service,
                 kind->method);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        rpc_call_t *c = calls[i]->arg;
        c->code = items[i].status.code;
        c->status = items[i].status;
        c->reply = items[i].reply;
        calls[i]->gathered = true;
    }
}

void gather_init_rpc(gather_t *g, const gather_rpc_kind_t *kind)
{
    gather_init(g, rpc_run, (void *)kind);
}

bool gather_rpc(gather_t *g, rpc_client_t *client, const ProtobufCMessage *request,
                const char *user_id, const char *request_id, const char *order_key,
                Paygate__V1__Code *code, rpc_status_t *status, ProtobufCMessage **reply)
{
    if (g == NULL)
        return false;
    rpc_call_t c = {.request = request,
                    .user_id = user_id,
                    .request_id =
                        request_id != NULL && request_id[0] != '\0' ? request_id : log_request_id(),
                    .order_key = order_key != NULL ? order_key : ""};
    gather_call_t call = {.arg = &c};
    gather_submit(g, client, &call);
    if (!call.gathered)
        return false;
    *code = c.code;
    if (status != NULL)
        *status = c.status;
    *reply = c.reply;
    return true;
}
