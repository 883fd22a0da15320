/*
 * pgrpc: database outcomes as RPC statuses. See pgrpc.h.
 */
#include "pgrpc.h"

#include "log/log.h"

Paygate__V1__Code pgrpc_fail(rpc_ctx_t *ctx, const pg_conn_t *pg, pg_result_t result,
                             const char *what)
{
    if (result == PG_UNAVAILABLE) {
        log_warn("%s: database unavailable (request %s): %s", what, rpc_ctx_request_id(ctx),
                 pg_error_message(pg));
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAVAILABLE, "database_unavailable",
                            "the database is unavailable; retry later");
    }
    /* Not the message: a data error may quote a parameter value. */
    log_error("%s: database error %s%s%s (request %s)", what, pg_error_sqlstate(pg),
              pg_error_constraint(pg)[0] ? " on " : "", pg_error_constraint(pg),
              rpc_ctx_request_id(ctx));
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                        "internal error (request %s)", rpc_ctx_request_id(ctx));
}

void pgrpc_batch_run(pg_conn_t *pg, const char *name, const char *sql, int nparams,
                     const pgrpc_batch_t *batch, rpc_ctx_t *const *ctxs,
                     const ProtobufCMessage *const *requests, ProtobufCMessage *const *replies,
                     Paygate__V1__Code *codes, bool *answered, pgrpc_row_answer_fn answer)
{
    if (batch->count == 0)
        return;
    PGresult *rows[rpc_batch_items_max];
    if (pg_exec_prepared_batch(pg, name, sql, nparams, batch->count, batch->params, rows) != PG_OK)
        return;
    for (size_t k = 0; k < batch->count; k++) {
        size_t i = batch->index[k];
        if (PQntuples(rows[k]) != 1) {
            PQclear(rows[k]);
            continue;
        }
        codes[i] = answer(ctxs[i], rows[k], requests[i], replies[i]);
        answered[i] = true;
    }
}

/* The connection of a thread state that begins with it. */
static pg_conn_t *state_pg(void *thread_state)
{
    return *(pg_conn_t **)thread_state;
}

static bool batch_begin(void *thread_state)
{
    return pg_begin(state_pg(thread_state)) == PG_OK;
}

static bool batch_failed(void *thread_state)
{
    return pg_transaction_failed(state_pg(thread_state));
}

static bool batch_commit(void *thread_state)
{
    return pg_commit(state_pg(thread_state)) == PG_OK;
}

static void batch_rollback(void *thread_state)
{
    pg_rollback(state_pg(thread_state));
}

const rpc_batch_ops_t pgrpc_batch_ops = {
    .begin = batch_begin,
    .failed = batch_failed,
    .commit = batch_commit,
    .rollback = batch_rollback,
};
