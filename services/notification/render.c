/*
 * render: money events into notifications. See render.h.
 *
 *   MoneyEvent --checked--> notification_t --jansson--> JSON (one line)
 *
 * The sentences (amounts from lib/money, Indian grouping):
 *   PAYMENT_SUCCEEDED  Your payment of ₹500 for Order #<order> is successful.
 *   PAYMENT_FAILED     Your payment of ₹500 for Order #<order> failed: <why>.
 *   REFUND_SUCCEEDED   ₹200 has been refunded to your wallet for Order #<order>.
 *   TOPUP_SUCCEEDED    ₹2,000 has been added to your wallet.
 */
#include "render.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "money/money.h"

/* True when 'text' is 1..'bytes_max' characters of [A-Za-z0-9_-]. */
static bool word_valid(const char *text, size_t bytes_max)
{
    size_t len = text != NULL ? strnlen(text, bytes_max + 1) : 0;
    if (len == 0 || len > bytes_max)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* True when 'text' is 1..'bytes_max' printable ASCII characters, no space. */
static bool token_valid(const char *text, size_t bytes_max)
{
    size_t len = text != NULL ? strnlen(text, bytes_max + 1) : 0;
    if (len == 0 || len > bytes_max)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < 0x21 || text[i] > 0x7e)
            return false;
    }
    return true;
}

bool notification_user_id_valid(const char *user_id)
{
    return word_valid(user_id, notification_user_id_bytes_max);
}

/* Why a payment failed, in words, from the stable failure code. Unknown
 * codes get a neutral sentence: never show a code to a person. */
static const char *failure_words(const char *failure_code)
{
    if (failure_code != NULL && strcmp(failure_code, "insufficient_funds") == 0)
        return "insufficient balance";
    if (failure_code != NULL && strcmp(failure_code, "order_not_payable") == 0)
        return "the order can no longer be paid";
    return "it could not be completed";
}

/* Writes Unix ms 'at_ms' as "YYYY-MM-DDTHH:MM:SS.mmmZ" (the services'
 * time format) into 'out'; "" when 'at_ms' is not positive. */
static void format_time_ms(int64_t at_ms, char out[notification_time_bytes_max + 1])
{
    out[0] = '\0';
    if (at_ms <= 0)
        return;
    time_t seconds = (time_t)(at_ms / 1000);
    struct tm tm;
    if (gmtime_r(&seconds, &tm) == NULL)
        return;
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, notification_time_bytes_max + 1, "%s.%03dZ", date, (int)(at_ms % 1000));
}

/* Sets '*problem' to 'why' and returns false. */
static bool refuse(const char **problem, const char *why)
{
    *problem = why;
    return false;
}

bool notification_render(const Paygate__V1__MoneyEvent *event, int64_t stored_at_ms,
                         notification_t *out, const char **problem)
{
    memset(out, 0, sizeof *out);
    *problem = NULL;
    if (!token_valid(event->event_id, notification_id_bytes_max))
        return refuse(problem, "event_id is missing or not 1..128 printable characters");
    if (!notification_user_id_valid(event->user_id))
        return refuse(problem, "user_id is missing or not 1..64 of [A-Za-z0-9_-]");
    if (!money_amount_valid(event->amount, MONEY_BALANCE_MINOR_MAX))
        return refuse(problem, "amount is not a positive amount of paise within the limit");
    if (event->currency != NULL && event->currency[0] != '\0' &&
        strcmp(event->currency, "INR") != 0)
        return refuse(problem, "currency is not INR");
    bool has_order = event->type != PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED;
    if (has_order && !word_valid(event->order_id, notification_ref_bytes_max))
        return refuse(problem, "order_id is missing or not 1..64 of [A-Za-z0-9_-]");
    if (has_order && event->payment_id != NULL && event->payment_id[0] != '\0' &&
        !word_valid(event->payment_id, notification_ref_bytes_max))
        return refuse(problem, "payment_id is not 1..64 of [A-Za-z0-9_-]");
    if (event->occurred_at != NULL && event->occurred_at[0] != '\0' &&
        !token_valid(event->occurred_at, notification_time_bytes_max))
        return refuse(problem, "occurred_at is not a time");

    char rupees[48];
    if (!money_format_inr(event->amount, rupees, sizeof rupees))
        return refuse(problem, "amount cannot be formatted");
    const char *type;
    int written;
    switch (event->type) {
    case PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED:
        type = "payment.succeeded";
        written =
            snprintf(out->message, sizeof out->message,
                     "Your payment of %s for Order #%s is successful.", rupees, event->order_id);
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_FAILED:
        type = "payment.failed";
        written = snprintf(out->message, sizeof out->message,
                           "Your payment of %s for Order #%s failed: %s.", rupees, event->order_id,
                           failure_words(event->failure_code));
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED:
        type = "refund.succeeded";
        written =
            snprintf(out->message, sizeof out->message,
                     "%s has been refunded to your wallet for Order #%s.", rupees, event->order_id);
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED:
        type = "topup.succeeded";
        written = snprintf(out->message, sizeof out->message, "%s has been added to your wallet.",
                           rupees);
        break;
    default:
        return refuse(problem, "unknown event type");
    }
    if (written < 0 || (size_t)written >= sizeof out->message)
        return refuse(problem, "message does not fit"); /* impossible with the checks above */

    snprintf(out->id, sizeof out->id, "%s", event->event_id);
    snprintf(out->user_id, sizeof out->user_id, "%s", event->user_id);
    snprintf(out->type, sizeof out->type, "%s", type);
    out->amount = event->amount;
    if (has_order) {
        snprintf(out->order_id, sizeof out->order_id, "%s", event->order_id);
        if (event->payment_id != NULL)
            snprintf(out->payment_id, sizeof out->payment_id, "%s", event->payment_id);
    }
    if (event->occurred_at != NULL && event->occurred_at[0] != '\0')
        snprintf(out->created_at, sizeof out->created_at, "%s", event->occurred_at);
    else
        format_time_ms(stored_at_ms, out->created_at);
    return true;
}

long notification_to_json(const notification_t *n, char *out, size_t out_size)
{
    json_t *object = json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "id", n->id, "user_id",
                               n->user_id, "type", n->type, "message", n->message, "amount",
                               (json_int_t)n->amount, "order_id", n->order_id, "payment_id",
                               n->payment_id, "created_at", n->created_at);
    if (object == NULL || out_size == 0) {
        json_decref(object);
        return -1;
    }
    /* jansson keeps insertion order: the fields come out in proto order. */
    size_t len = json_dumpb(object, out, out_size - 1, JSON_COMPACT);
    json_decref(object);
    if (len == 0 || len > out_size - 1)
        return -1;
    out[len] = '\0';
    return (long)len;
}

/* Copies string member 'key' of 'object' into 'out' of 'out_size' bytes.
 * False when it is missing, not a string, or too long. */
static bool copy_string(const json_t *object, const char *key, char *out, size_t out_size)
{
    const json_t *value = json_object_get(object, key);
    if (!json_is_string(value) || json_string_length(value) >= out_size ||
        strlen(json_string_value(value)) != json_string_length(value))
        return false;
    memcpy(out, json_string_value(value), json_string_length(value) + 1);
    return true;
}

bool notification_from_json(const char *text, size_t len, notification_t *out)
{
    memset(out, 0, sizeof *out);
    json_t *object = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    const json_t *amount = json_object_get(object, "amount");
    bool ok = json_is_object(object) && json_is_integer(amount) &&
              copy_string(object, "id", out->id, sizeof out->id) &&
              copy_string(object, "user_id", out->user_id, sizeof out->user_id) &&
              copy_string(object, "type", out->type, sizeof out->type) &&
              copy_string(object, "message", out->message, sizeof out->message) &&
              copy_string(object, "order_id", out->order_id, sizeof out->order_id) &&
              copy_string(object, "payment_id", out->payment_id, sizeof out->payment_id) &&
              copy_string(object, "created_at", out->created_at, sizeof out->created_at);
    if (ok)
        out->amount = (int64_t)json_integer_value(amount);
    json_decref(object);
    return ok;
}
