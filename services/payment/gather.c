/*
 * gather (payment): the steps of a payment that its threads make
 * together. See gather.h.
 */
#include "gather.h"

#include <string.h>

#include "log/log.h"
#include "order.pb-c.h"
#include "user.pb-c.h"

/* One call of a statement kind. */
typedef struct {
    const char *const *params;
    pg_result_t result;
    PGresult *rows;
} sql_call_t;

/* Orders two calls of a statement kind by its order_by parameters. */
static int sql_compare(const gather_call_t *a, const gather_call_t *b,
                       const payment_sql_kind_t *kind)
{
    const sql_call_t *x = a->arg, *y = b->arg;
    for (size_t k = 0; k < 2 && kind->order_by[k] >= 0; k++) {
        int c = strcmp(x->params[kind->order_by[k]], y->params[kind->order_by[k]]);
        if (c != 0)
            return c;
    }
    return 0;
}

/* Sorts 'calls' by their order_by parameters (insertion sort: a batch is
 * at most gather_batch_max). */
static void sql_sort(gather_call_t **calls, size_t count, const payment_sql_kind_t *kind)
{
    for (size_t i = 1; i < count; i++) {
        gather_call_t *call = calls[i];
        size_t j = i;
        for (; j > 0 && sql_compare(calls[j - 1], call, kind) > 0; j--)
            calls[j] = calls[j - 1];
        calls[j] = call;
    }
}

/* gather_run_fn of statement kinds: one alone on the leader's
 * connection, several in one pipelined transaction. */
static void sql_run(gather_t *g, void *leader, gather_call_t **calls, size_t count)
{
    const payment_sql_kind_t *kind = g->kind;
    pg_conn_t *pg = leader;
    if (count == 1) {
        sql_call_t *c = calls[0]->arg;
        c->result =
            pg_exec_prepared(pg, kind->statement, kind->sql, kind->nparams, c->params, &c->rows);
        calls[0]->gathered = true;
        return;
    }
    sql_sort(calls, count, kind);
    const char *const *params[gather_batch_max] = {0};
    PGresult *rows[gather_batch_max];
    for (size_t i = 0; i < count; i++)
        params[i] = ((sql_call_t *)calls[i]->arg)->params;
    pg_result_t result =
        pg_exec_prepared_batch(pg, kind->statement, kind->sql, kind->nparams, count, params, rows);
    if (result != PG_OK) {
        log_info("gather: a batch of %zu %s statements did not commit (%s); each runs alone", count,
                 kind->statement, pg_error_sqlstate(pg));
        return;
    }
    for (size_t i = 0; i < count; i++) {
        sql_call_t *c = calls[i]->arg;
        c->result = PG_OK;
        c->rows = rows[i];
        calls[i]->gathered = true;
    }
}

bool payment_gather_sql(gather_t *g, pg_conn_t *pg, const char *const *params, PGresult **rows,
                        pg_result_t *result)
{
    if (g == NULL)
        return false;
    sql_call_t c = {.params = params};
    gather_call_t call = {.arg = &c};
    gather_submit(g, pg, &call);
    if (!call.gathered)
        return false;
    *rows = c.rows;
    *result = c.result;
    return true;
}

void payment_gathers_init(payment_gathers_t *gathers, uint32_t deadline_ms,
                          const payment_sql_kind_t *insert, const payment_sql_kind_t *finish,
                          metrics_t *metrics)
{
    gathers->order_get_kind = (gather_rpc_kind_t){.service = "order",
                                                  .method = "Get",
                                                  .reply_desc = &paygate__v1__order__descriptor,
                                                  .principal = "payment",
                                                  .deadline_ms = deadline_ms};
    gathers->debit_kind =
        (gather_rpc_kind_t){.service = "user",
                            .method = "Debit",
                            .reply_desc = &paygate__v1__wallet_movement__descriptor,
                            .principal = "payment",
                            .deadline_ms = deadline_ms};
    gathers->mark_paid_kind = (gather_rpc_kind_t){.service = "order",
                                                  .method = "MarkPaid",
                                                  .reply_desc = &paygate__v1__order__descriptor,
                                                  .principal = "payment",
                                                  .deadline_ms = deadline_ms};
    gathers->insert_kind = *insert;
    gathers->finish_kind = *finish;
    gather_init_rpc(&gathers->order_get, &gathers->order_get_kind);
    gather_init(&gathers->payment_insert, sql_run, &gathers->insert_kind);
    gather_init_rpc(&gathers->debit, &gathers->debit_kind);
    gather_init_rpc(&gathers->mark_paid, &gathers->mark_paid_kind);
    gather_init(&gathers->payment_finish, sql_run, &gathers->finish_kind);
    /* A payment's steps, in order; the last leads to the first because
     * the clients whose payments finished together send their next ones
     * together. */
    gather_then(&gathers->order_get, &gathers->payment_insert, payment_linger_step_us);
    gather_then(&gathers->payment_insert, &gathers->debit, payment_linger_step_us);
    gather_then(&gathers->debit, &gathers->mark_paid, payment_linger_step_us);
    gather_then(&gathers->mark_paid, &gathers->payment_finish, payment_linger_step_us);
    gather_then(&gathers->payment_finish, &gathers->order_get, payment_linger_round_us);

    const char *const kind[] = {"kind", NULL};
    metrics_family_t *calls = metrics_counter_family(
        metrics, "paygate_payment_gathered_calls_total",
        "Calls of payments made together with other payments' (gather.h), by kind.", kind);
    metrics_family_t *batches =
        metrics_counter_family(metrics, "paygate_payment_gathered_batches_total",
                               "The batches those calls made, by kind.", kind);
    struct {
        gather_t *gather;
        const char *kind;
    } kinds[] = {{&gathers->order_get, "order_get"},
                 {&gathers->payment_insert, "payment_insert"},
                 {&gathers->debit, "debit"},
                 {&gathers->mark_paid, "mark_paid"},
                 {&gathers->payment_finish, "payment_finish"}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const char *const values[] = {kinds[i].kind};
        gather_count_in(kinds[i].gather, metrics_series(calls, values),
                        metrics_series(batches, values));
    }
}
