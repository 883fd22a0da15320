/*
 * broker_metrics: the broker's numbers for Prometheus, scraped from a
 * snapshot.
 *
 * The broker is single-threaded and its state is not thread-safe, so a
 * scrape never reads it. Instead the broker loop, every
 * metrics_interval_ms, fills the same ListServicesReply that discovery
 * answers (registry_list, bus_list and the broker's own counters),
 * renders it into text, and swaps that text in under a mutex. The
 * listener thread (lib/metrics/metrics_server.c) copies the latest text
 * under the same mutex. The loop holds the mutex only for a pointer swap,
 * so a slow scraper can never stall routing; a scrape is at most one
 * interval old.
 *
 *   paygate_broker_workers{service}                     gauge
 *   paygate_broker_queued_requests{service}             gauge
 *   paygate_broker_in_flight_requests{service}          gauge
 *   paygate_broker_requests_routed_total                counter
 *   paygate_broker_requests_expired_total               counter
 *   paygate_broker_requests_failed_total{reason}        counter (unavailable, queue_full)
 *   paygate_broker_replies_late_total                   counter
 *   paygate_broker_workers_expired_total                counter
 *   paygate_broker_sends_failed_total                   counter
 *   paygate_broker_bad_messages_total{kind}             counter
 *   paygate_broker_uptime_seconds                       gauge
 *   paygate_broker_events_appended_total{topic}         counter
 *   paygate_broker_events_duplicate_total{topic}        counter
 *   paygate_broker_topic_end_offset{topic}              gauge
 *   paygate_broker_topic_bytes{topic}                   gauge
 *   paygate_broker_consumer_lag_events{topic,group}     gauge
 *   paygate_broker_consumer_in_flight_events{topic,group} gauge
 *   paygate_broker_consumers{topic,group}               gauge
 *   paygate_broker_events_redelivered_total{topic,group}  counter
 *   paygate_broker_events_dead_lettered_total{topic,group} counter
 */
#ifndef PAYGATE_BROKER_METRICS_H
#define PAYGATE_BROKER_METRICS_H

#include <stdbool.h>

#include "broker.pb-c.h"
#include "metrics/metrics.h"
#include "metrics/metrics_server.h"

typedef struct broker_metrics broker_metrics_t;

/* Starts the listener of 'config'. Returns NULL when the port is 0 (then
 * '*failed' is false) or when it cannot listen ('*failed' true, logged). */
broker_metrics_t *broker_metrics_start(const metrics_server_config_t *config, bool *failed);

/* Renders 'reply' (a filled discovery answer) and makes it the text that
 * scrapes get. Called by the broker loop only. */
void broker_metrics_publish(broker_metrics_t *self, const Paygate__V1__ListServicesReply *reply);

/* Stops the listener, frees everything, sets '*self' to NULL. */
void broker_metrics_stop(broker_metrics_t **self);

/* Appends the families above for 'reply' to 'text'. Pure. */
void broker_metrics_render(const Paygate__V1__ListServicesReply *reply, metrics_text_t *text);

#endif
