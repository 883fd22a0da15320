/*
 * accounts: Register and Login.
 *
 * Register creates the account and its empty wallet in one statement.
 * Login answers the same UNAUTHENTICATED/invalid_credentials whether the
 * email is unknown or the password wrong, and takes as long either way.
 * Passwords and hashes are never logged.
 */
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "credentials.h"
#include "id/id.h"
#include "log/log.h"
#include "pgrpc/pgrpc.h"
#include "user.pb-c.h"
#include "user_service.h"

static const char register_sql[] =
    "WITH account AS ("
    "  INSERT INTO accounts (id, email, password_hash, name) VALUES ($1, $2, $3, $4)"
    "  RETURNING id, email, name, created_at),"
    " wallet AS (INSERT INTO wallets (user_id) SELECT id FROM account)"
    " SELECT id, email, name, " PGRPC_TIME("created_at") " FROM account";

static const char login_sql[] = "SELECT id, password_hash FROM accounts WHERE email = $1";

Paygate__V1__Code user_register(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                ProtobufCMessage *reply_msg, void *thread_state)
{
    user_thread_t *thread = thread_state;
    const Paygate__V1__RegisterRequest *request = (const Paygate__V1__RegisterRequest *)request_msg;
    Paygate__V1__User *reply = (Paygate__V1__User *)reply_msg;

    char email[email_bytes_max + 1], name[4 * name_chars_max + 1];
    const char *problem = credentials_email_normalise(request->email, email, sizeof email);
    if (problem != NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_email", "%s",
                            problem);
    problem = credentials_password_check(request->password);
    if (problem != NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_password", "%s",
                            problem);
    problem = credentials_name_normalise(request->name, name, sizeof name);
    if (problem != NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_name", "%s",
                            problem);

    char hash[password_hash_bytes], id[id_bytes_max];
    if (!credentials_hash(request->password, hash) || !id_new("usr", id, sizeof id))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "could not hash the password");
    const char *params[] = {id, email, hash, name};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(thread->pg, "user_register", register_sql, 4, params, &rows);
    sodium_memzero(hash, sizeof hash);
    if (result == PG_CONSTRAINT &&
        strcmp(pg_error_constraint(thread->pg), "accounts_email_key") == 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__ALREADY_EXISTS, "email_taken",
                            "an account with this email exists already");
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "register");
    reply->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 0));
    reply->email = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 1));
    reply->name = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 2));
    reply->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 3));
    PQclear(rows);
    log_info("register: created %s (request %s)", reply->id, rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code user_login(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                             ProtobufCMessage *reply_msg, void *thread_state)
{
    user_thread_t *thread = thread_state;
    const Paygate__V1__LoginRequest *request = (const Paygate__V1__LoginRequest *)request_msg;
    Paygate__V1__LoginReply *reply = (Paygate__V1__LoginReply *)reply_msg;

    char email[email_bytes_max + 1];
    const char *password = request->password ? request->password : "";
    if (credentials_email_normalise(request->email, email, sizeof email) != NULL ||
        strlen(password) > 4 * password_chars_max) {
        credentials_verify_dummy(password);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "invalid_credentials",
                            "email or password is wrong");
    }
    const char *params[] = {email};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(thread->pg, "user_login", login_sql, 1, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "login");
    bool known = PQntuples(rows) == 1;
    bool match = known ? credentials_verify(password, PQgetvalue(rows, 0, 1))
                       : (credentials_verify_dummy(password), false);
    if (!match) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "invalid_credentials",
                            "email or password is wrong");
    }
    char token[TOKEN_BYTES_MAX + 1];
    bool issued =
        token_issue(thread->keys, PQgetvalue(rows, 0, 0), (int64_t)time(NULL), token, sizeof token);
    PQclear(rows);
    if (!issued)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "could not issue a token");
    reply->access_token = rpc_ctx_strdup(ctx, token);
    reply->token_type = (char *)"Bearer";
    reply->expires_in = token_ttl_s(thread->keys);
    return PAYGATE__V1__CODE__OK;
}
