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

/* The SQL expression that renders timestamptz column 'c' as RFC 3339 UTC
 * with milliseconds, e.g. PGRPC_TIME("created_at"). */
#define PGRPC_TIME(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

#endif
