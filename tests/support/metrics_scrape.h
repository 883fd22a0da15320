/*
 * metrics_scrape: GET /metrics of a test's process and read its samples,
 * failing the running cmocka test when the scrape fails.
 */
#ifndef PAYGATE_TEST_METRICS_SCRAPE_H
#define PAYGATE_TEST_METRICS_SCRAPE_H

#include <stdbool.h>

/* The text of GET /metrics on 127.0.0.1:'port' ('what' names the process
 * in a failure), malloc'd and starting with a newline, so that every
 * sample line starts with "\nname". Fails the test unless the answer is
 * 200. */
char *metrics_scrape(int port, const char *what);

/* The value of sample 'key' (the metric name and its labels exactly as
 * rendered, e.g. name{a="x"}) in 'text'; '*found' (may be NULL) says
 * whether there is such a line; 0 when there is none. */
double metrics_sample(const char *text, const char *key, bool *found);

#endif
