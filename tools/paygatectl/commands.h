/*
 * commands: paygatectl's subcommands that live in files of their own (one
 * file each: call.c, tail.c, topics.c, demo.c). main.c parses the global
 * options and dispatches.
 *
 * Each takes the broker 'endpoint', the global 'timeout_ms' and the
 * arguments after the command's name, handles its own --help (usage on
 * stdout, 0), and returns the process's exit code: 0 done, 1 failed (the
 * broker did not answer, an error status, bad input), 2 usage.
 */
#ifndef PAYGATECTL_COMMANDS_H
#define PAYGATECTL_COMMANDS_H

#include <stdint.h>

enum {
    exit_ok = 0,
    exit_failed = 1,
    exit_usage = 2,
};

/* call SERVICE METHOD [--json JSON|-] [--user ID] [--principal NAME]
 *      [--request-id ID] [--timeout MS] [--compact] */
int command_call(const char *endpoint, uint32_t timeout_ms, int argc, char **argv);

/* tail TOPIC [--group GROUP] [--from-beginning] [--max N] */
int command_tail(const char *endpoint, uint32_t timeout_ms, int argc, char **argv);

/* topics [--json] [TOPIC] */
int command_topics(const char *endpoint, uint32_t timeout_ms, int argc, char **argv);

/* groups [--json] [TOPIC] */
int command_groups(const char *endpoint, uint32_t timeout_ms, int argc, char **argv);

/* demo [--verbose] [--wait MS] */
int command_demo(const char *endpoint, uint32_t timeout_ms, int argc, char **argv);

#endif
