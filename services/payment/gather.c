/*
 * gather: the payment threads' calls of one kind, made together. See
 * gather.h.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "payment_service.h"

/* One thread's call, on its stack while it waits. */
struct gather_call {
    /* in */
    const ProtobufCMessage *request; /* rpc */
    const char *user_id;
    const char *request_id;
    const char *order_key;
    const char *const *params; /* sql */
    /* out, set by the leader before 'done' */
    bool done;
    bool gathered; /* false: make the single call yourself */
    Paygate__V1__Code code;
    rpc_status_t status;
    ProtobufCMessage *reply;
    pg_result_t result;
    PGresult *rows;
    pthread_cond_t wake; /* done, or this call leads the next batch */
    gather_call_t *next;
};

static void gather_init(gather_t *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g->arrived, &attr);
    pthread_condattr_destroy(&attr);
    g->tail = &g->head;
}

void gather_then(gather_t *g, gather_t *then, unsigned linger_us)
{
    g->then = then;
    then->linger_us = linger_us;
}

void gather_init_rpc(gather_t *g, const char *service, const char *method,
                     const ProtobufCMessageDescriptor *reply_desc)
{
    gather_init(g);
    g->service = service;
    g->method = method;
    g->reply_desc = reply_desc;
}

void gather_init_sql(gather_t *g, const char *statement, const char *sql, int nparams)
{
    gather_init(g);
    g->statement = statement;
    g->sql = sql;
    g->nparams = nparams;
}

void gather_destroy(gather_t *g)
{
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->arrived);
}

static int by_order_key(const void *a, const void *b)
{
    const gather_call_t *x = *(gather_call_t *const *)a;
    const gather_call_t *y = *(gather_call_t *const *)b;
    return strcmp(x->order_key, y->order_key);
}

/* Makes the one call queued, the leader's own, as a single call (with
 * the kind's running flag still set, so that whoever comes meanwhile
 * queues for the next batch). */
static void gather_run_single(payment_env_t *env, gather_t *g, gather_call_t *call)
{
    call->gathered = true;
    if (g->service != NULL) {
        rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms,
                                .request_id = call->request_id,
                                .user_id = call->user_id,
                                .principal = "payment"};
        call->code = rpc_client_call(env->rpc, g->service, g->method, call->request, g->reply_desc,
                                     &call->reply, &opts, &call->status);
    } else {
        call->result =
            pg_exec_prepared(env->pg, g->statement, g->sql, g->nparams, call->params, &call->rows);
    }
}

/* Makes one batched call of g's method for 'calls' with the leader's
 * client. */
static void gather_run_rpc(payment_env_t *env, gather_t *g, gather_call_t **calls, size_t count)
{
    qsort(calls, count, sizeof *calls, by_order_key);
    rpc_batch_item_t items[gather_batch_max];
    for (size_t i = 0; i < count; i++)
        items[i] = (rpc_batch_item_t){.request = calls[i]->request,
                                      .user_id = calls[i]->user_id,
                                      .request_id = calls[i]->request_id};
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms, .principal = "payment"};
    rpc_status_t status;
    Paygate__V1__Code code = rpc_client_call_batch(env->rpc, g->service, g->method, items, count,
                                                   g->reply_desc, &opts, &status);
    if (code == PAYGATE__V1__CODE__UNIMPLEMENTED) {
        /* a service from before batches (e.g. during a rolling upgrade):
         * each makes its single call */
        log_info("gather: %s.%s takes no batches; calling it once per payment", g->service,
                 g->method);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        calls[i]->gathered = true;
        calls[i]->code = items[i].status.code;
        calls[i]->status = items[i].status;
        calls[i]->reply = items[i].reply;
    }
}

/* Runs g's statement for 'calls' in one transaction on the leader's
 * connection, sent in one round trip. */
static void gather_run_sql(payment_env_t *env, gather_t *g, gather_call_t **calls, size_t count)
{
    const char *const *params[gather_batch_max];
    PGresult *rows[gather_batch_max];
    for (size_t i = 0; i < count; i++)
        params[i] = calls[i]->params;
    pg_result_t result =
        pg_exec_prepared_batch(env->pg, g->statement, g->sql, g->nparams, count, params, rows);
    if (result != PG_OK) {
        log_info("gather: a batch of %zu %s statements did not commit (%s); each runs alone", count,
                 g->statement, pg_error_sqlstate(env->pg));
        return;
    }
    for (size_t i = 0; i < count; i++) {
        calls[i]->gathered = true;
        calls[i]->result = PG_OK;
        calls[i]->rows = rows[i];
    }
}

/* Queues 'call' and returns when it is done: run by this thread, as the
 * leader of a batch, or by another thread's batch. */
static void gather_submit(payment_env_t *env, gather_t *g, gather_call_t *call)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&call->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_lock(&g->lock);
    call->next = NULL;
    *g->tail = call;
    g->tail = &call->next;
    g->queued++;
    if (g->expected > 0)
        g->expected--;
    if (g->lingering)
        pthread_cond_signal(&g->arrived);
    while (!call->done) {
        if (g->running) {
            pthread_cond_wait(&call->wake, &g->lock);
            continue;
        }
        /* Lead. Payments that were gathered at the step before come here
         * together, one after another as their threads wake: wait a
         * moment for them ('expected'), so that they stay one batch. */
        g->running = true;
        if (g->expected > 0 && g->queued < gather_batch_max) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += (long)g->linger_us * 1000;
            if (until.tv_nsec >= 1000000000L) {
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
        if (count == 1) {
            gather_run_single(env, g, calls[0]);
        } else {
            if (g->service != NULL)
                gather_run_rpc(env, g, calls, count);
            else
                gather_run_sql(env, g, calls, count);
            if (calls[0]->gathered) {
                metrics_counter_add(g->calls, count);
                metrics_counter_add(g->batches, 1);
            }
        }
        /* Tell the next step that these are on their way. */
        if (g->then != NULL && count > 1) {
            pthread_mutex_lock(&g->then->lock);
            g->then->expected += (unsigned)count;
            pthread_mutex_unlock(&g->then->lock);
        }
        pthread_mutex_lock(&g->lock);
        for (size_t i = 0; i < count; i++) {
            calls[i]->done = true;
            if (calls[i] != call)
                pthread_cond_signal(&calls[i]->wake);
        }
        g->running = false;
        if (g->head != NULL) /* the first queued leads the next batch */
            pthread_cond_signal(&g->head->wake);
    }
    pthread_mutex_unlock(&g->lock);
    pthread_cond_destroy(&call->wake);
}

bool gather_rpc(payment_env_t *env, gather_t *g, const ProtobufCMessage *request,
                const char *user_id, const char *request_id, const char *order_key,
                Paygate__V1__Code *code, rpc_status_t *status, ProtobufCMessage **reply)
{
    if (g == NULL)
        return false;
    gather_call_t call = {
        .request = request,
        .user_id = user_id,
        .request_id = request_id != NULL && request_id[0] != '\0' ? request_id : log_request_id(),
        .order_key = order_key};
    gather_submit(env, g, &call);
    if (!call.gathered)
        return false;
    *code = call.code;
    if (status != NULL)
        *status = call.status;
    *reply = call.reply;
    return true;
}

bool gather_sql(payment_env_t *env, gather_t *g, const char *const *params, PGresult **rows,
                pg_result_t *result)
{
    if (g == NULL)
        return false;
    gather_call_t call = {.params = params, .order_key = ""};
    gather_submit(env, g, &call);
    if (!call.gathered)
        return false;
    *rows = call.rows;
    *result = call.result;
    return true;
}
