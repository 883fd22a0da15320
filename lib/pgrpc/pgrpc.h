/*
 * pgrpc: how a database failure becomes an RPC status.
 *
 * A lost or unreachable database is UNAVAILABLE (the client retries with
 * the same idempotency key); anything else unexpected is INTERNAL. The
 * database's own error text goes to the log, never to the client.
 */
#ifndef PAYGATE_PGRPC_H
#define PAYGATE_PGRPC_H

#include "pg/pg.h"
#include "rpc/rpc.h"

/* Fails the call for database outcome 'result' of operation 'what' and
 * logs the details with the request id. Returns the code to return. */
Paygate__V1__Code pgrpc_fail(rpc_ctx_t *ctx, const pg_conn_t *pg, pg_result_t result,
                             const char *what);

/* Batches run in one database transaction (RPC_BATCH_TRANSACTION): the
 * batch_ops of a server whose thread states begin with their pg_conn_t *
 * (the member the handlers run their statements on). */
extern const rpc_batch_ops_t pgrpc_batch_ops;

/* The database part of a method's batch code (lib/rpc
 * RPC_BATCH_HANDLER): the parameter sets the code collected, one per
 * call it runs, and which call each belongs to. */
typedef struct {
    size_t count;
    size_t index[rpc_batch_items_max];              /* the call of set k */
    const char *const *params[rpc_batch_items_max]; /* set k */
} pgrpc_batch_t;

/* Answers call 'ctx' from the one row its statement returned ('rows',
 * which it PQclears), as the single call would. */
typedef Paygate__V1__Code (*pgrpc_row_answer_fn)(rpc_ctx_t *ctx, PGresult *rows,
                                                 const ProtobufCMessage *request,
                                                 ProtobufCMessage *reply);

/* Runs prepared statement 'name' ('sql', 'nparams') once for each set of
 * 'batch' in one transaction and one round trip (pg_exec_prepared_batch)
 * and, when it committed, answers each call whose statement returned
 * exactly one row with 'answer' (setting answered[] and codes[] of the
 * batch code's arguments). The other calls, and all of them when the
 * transaction did not commit, are left unanswered: their statements
 * changed nothing, and the method's handler runs them alone. */
void pgrpc_batch_run(pg_conn_t *pg, const char *name, const char *sql, int nparams,
                     const pgrpc_batch_t *batch, rpc_ctx_t *const *ctxs,
                     const ProtobufCMessage *const *requests, ProtobufCMessage *const *replies,
                     Paygate__V1__Code *codes, bool *answered, pgrpc_row_answer_fn answer);

/* The SQL expression that renders timestamptz column 'c' as RFC 3339 UTC
 * with milliseconds, e.g. PGRPC_TIME("created_at"). */
#define PGRPC_TIME(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

#endif
