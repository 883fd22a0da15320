/*
 * broker_metrics: snapshots of the broker's state as Prometheus text. See
 * broker_metrics.h.
 */
#include "broker_metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct broker_metrics {
    metrics_server_t *server;
    pthread_mutex_t lock; /* guards 'latest' */
    metrics_text_t latest;
};

/* The listener thread's callback: a copy of the latest snapshot. */
static void render_latest(void *ctx, metrics_text_t *text)
{
    broker_metrics_t *self = ctx;
    pthread_mutex_lock(&self->lock);
    if (self->latest.data != NULL) {
        /* a copy: the loop may swap in the next snapshot at any time */
        size_t len = self->latest.len;
        char *copy = malloc(len + 1);
        if (copy != NULL) {
            memcpy(copy, self->latest.data, len + 1);
            metrics_text_free(text);
            text->data = copy;
            text->len = len;
            text->cap = len + 1;
        } else {
            text->failed = true;
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (text->data == NULL && !text->failed) {
        /* no snapshot yet: an empty, valid exposition */
        text->data = calloc(1, 1);
        text->cap = 1;
        text->failed = text->data == NULL;
    }
}

broker_metrics_t *broker_metrics_start(const metrics_server_config_t *config, bool *failed)
{
    *failed = false;
    if (config->port == 0)
        return NULL;
    broker_metrics_t *self = calloc(1, sizeof *self);
    if (self == NULL) {
        *failed = true;
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    metrics_text_init(&self->latest);
    self->server = metrics_server_start(config, render_latest, self, NULL);
    if (self->server == NULL) {
        pthread_mutex_destroy(&self->lock);
        free(self);
        *failed = true;
        return NULL;
    }
    return self;
}

void broker_metrics_publish(broker_metrics_t *self, const Paygate__V1__ListServicesReply *reply)
{
    metrics_text_t text;
    metrics_text_init(&text);
    broker_metrics_render(reply, &text);
    if (text.failed) {
        metrics_text_free(&text); /* keep the previous snapshot */
        return;
    }
    pthread_mutex_lock(&self->lock);
    metrics_text_t old = self->latest;
    self->latest = text;
    pthread_mutex_unlock(&self->lock);
    metrics_text_free(&old);
}

void broker_metrics_stop(broker_metrics_t **self_p)
{
    broker_metrics_t *self = *self_p;
    if (self == NULL)
        return;
    metrics_server_stop(&self->server); /* joins the thread: nobody reads 'latest' now */
    metrics_text_free(&self->latest);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

/* ---- rendering ------------------------------------------------------------ */

/* One family of samples without labels. */
static void scalar(metrics_text_t *text, const char *name, const char *type, const char *help,
                   uint64_t value)
{
    metrics_text_family(text, name, type, help);
    metrics_text_sample_u64(text, name, NULL, NULL, 0, value);
}

void broker_metrics_render(const Paygate__V1__ListServicesReply *reply, metrics_text_t *text)
{
    static const char *const service_label[] = {"service"};
    static const char *const topic_label[] = {"topic"};
    static const char *const group_labels[] = {"topic", "group"};

    /* per service: gauges of the moment */
    static const struct {
        const char *name;
        const char *help;
    } service_families[] = {
        {"paygate_broker_workers", "Registered worker instances, by service."},
        {"paygate_broker_queued_requests",
         "Requests waiting for a free worker instance, by service."},
        {"paygate_broker_in_flight_requests",
         "Requests at a worker, not yet answered, by service."},
    };
    for (size_t f = 0; f < sizeof service_families / sizeof service_families[0]; f++) {
        metrics_text_family(text, service_families[f].name, "gauge", service_families[f].help);
        for (size_t i = 0; i < reply->n_services; i++) {
            const Paygate__V1__ServiceInfo *s = reply->services[i];
            uint64_t value = s->n_instances;
            if (f == 1)
                value = s->queue_depth;
            if (f == 2) {
                value = 0;
                for (size_t k = 0; k < s->n_instances; k++)
                    value += s->instances[k]->in_flight;
            }
            const char *const values[] = {s->name};
            metrics_text_sample_u64(text, service_families[f].name, service_label, values, 1,
                                    value);
        }
    }

    /* broker-wide counters */
    const Paygate__V1__BrokerStats *st = reply->stats;
    if (st != NULL) {
        scalar(text, "paygate_broker_requests_routed_total", "counter",
               "Requests handed to a worker instance.", st->requests_routed);
        scalar(text, "paygate_broker_requests_expired_total", "counter",
               "Requests answered DEADLINE_EXCEEDED by the broker.", st->requests_expired);
        static const char *const reason_label[] = {"reason"};
        metrics_text_family(text, "paygate_broker_requests_failed_total", "counter",
                            "Requests the broker answered itself with a failure other than a "
                            "deadline: unavailable (no worker), queue_full.");
        const char *const unavailable[] = {"unavailable"};
        const char *const queue_full[] = {"queue_full"};
        metrics_text_sample_u64(text, "paygate_broker_requests_failed_total", reason_label,
                                unavailable, 1, st->requests_unavailable);
        metrics_text_sample_u64(text, "paygate_broker_requests_failed_total", reason_label,
                                queue_full, 1, st->requests_rejected_full);
        scalar(text, "paygate_broker_replies_late_total", "counter",
               "Worker replies that came after their client was answered.", st->replies_late);
        scalar(text, "paygate_broker_workers_expired_total", "counter",
               "Worker instances dropped after missing their heartbeats.", st->workers_expired);
        scalar(text, "paygate_broker_sends_failed_total", "counter",
               "Messages not sent because the peer was gone.", st->sends_failed);
        scalar(text, "paygate_broker_peers_refused_total", "counter",
               "Connections refused by CURVE authentication (unknown key).", st->peers_refused);
        scalar(text, "paygate_broker_commands_denied_total", "counter",
               "Commands refused because the sending key may not do them.", st->commands_denied);
        static const char *const kind_label[] = {"kind"};
        metrics_text_family(text, "paygate_broker_bad_messages_total", "counter",
                            "Messages refused before routing, by kind.");
        const char *const kinds[][1] = {{"malformed"}, {"unknown_command"}, {"oversized"}};
        const uint64_t counts[] = {st->frames_malformed, st->commands_unknown,
                                   st->messages_oversized};
        for (size_t k = 0; k < 3; k++)
            metrics_text_sample_u64(text, "paygate_broker_bad_messages_total", kind_label, kinds[k],
                                    1, counts[k]);
        metrics_text_family(text, "paygate_broker_uptime_seconds", "gauge",
                            "Seconds since the broker started.");
        metrics_text_sample_double(text, "paygate_broker_uptime_seconds", NULL, NULL, 0,
                                   (double)st->uptime_ms / 1000.0);
    }

    /* event bus: per topic */
    static const struct {
        const char *name;
        const char *type;
        const char *help;
    } topic_families[] = {
        {"paygate_broker_events_appended_total", "counter",
         "Events appended to the topic since the broker started (duplicates not included)."},
        {"paygate_broker_events_duplicate_total", "counter",
         "Publishes answered as duplicates of a remembered event id."},
        {"paygate_broker_topic_end_offset", "gauge", "The offset the next event will get."},
        {"paygate_broker_topic_bytes", "gauge", "Bytes of the topic's retained segments."},
    };
    for (size_t f = 0; f < sizeof topic_families / sizeof topic_families[0]; f++) {
        metrics_text_family(text, topic_families[f].name, topic_families[f].type,
                            topic_families[f].help);
        for (size_t i = 0; i < reply->n_topics; i++) {
            const Paygate__V1__TopicInfo *t = reply->topics[i];
            const uint64_t values_by_family[] = {t->published, t->duplicates, t->end_offset,
                                                 t->bytes};
            const char *const values[] = {t->name};
            metrics_text_sample_u64(text, topic_families[f].name, topic_label, values, 1,
                                    values_by_family[f]);
        }
    }

    /* event bus: per consumer group of each topic */
    static const struct {
        const char *name;
        const char *type;
        const char *help;
    } group_families[] = {
        {"paygate_broker_consumer_lag_events", "gauge",
         "Events of the topic the group has not acknowledged (end offset - committed offset)."},
        {"paygate_broker_consumer_in_flight_events", "gauge",
         "Events delivered to the group's consumers and not yet acknowledged."},
        {"paygate_broker_consumers", "gauge", "Connected consumers of the group."},
        {"paygate_broker_events_redelivered_total", "counter",
         "Deliveries repeated after a timeout, a NACK or a lost consumer."},
        {"paygate_broker_events_dead_lettered_total", "counter",
         "Events moved to <topic>.dlq after too many deliveries."},
    };
    for (size_t f = 0; f < sizeof group_families / sizeof group_families[0]; f++) {
        metrics_text_family(text, group_families[f].name, group_families[f].type,
                            group_families[f].help);
        for (size_t i = 0; i < reply->n_topics; i++) {
            const Paygate__V1__TopicInfo *t = reply->topics[i];
            for (size_t k = 0; k < t->n_groups; k++) {
                const Paygate__V1__GroupInfo *g = t->groups[k];
                const uint64_t values_by_family[] = {g->lag, g->in_flight, g->consumers,
                                                     g->redelivered, g->dead_lettered};
                const char *const values[] = {t->name, g->name};
                metrics_text_sample_u64(text, group_families[f].name, group_labels, values, 2,
                                        values_by_family[f]);
            }
        }
    }
}
