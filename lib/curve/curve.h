/*
 * curve: a process's identity towards the broker (ZeroMQ CURVE), and
 * putting it on a socket before the socket connects.
 *
 * An identity is the process's own certificate (public and secret key,
 * CZMQ zcert format, written by paygate-certs) plus the broker's public
 * key. It comes from the environment:
 *
 *   PAYGATE_CURVE_CERT           this process's secret certificate file
 *   PAYGATE_BROKER_PUBLIC_KEY    the broker's public key (40 Z85 chars), or
 *   PAYGATE_BROKER_CERT          the broker's public certificate file
 *   PAYGATE_INSECURE_PLAINTEXT=1 no CURVE at all (tests, local debugging):
 *                                logs a loud warning
 *
 * With a certificate the insecure setting is ignored. With neither, there
 * is no identity: every process refuses to start, naming the variables.
 *
 * This module must never fall back to plaintext by itself.
 */
#ifndef PAYGATE_CURVE_H
#define PAYGATE_CURVE_H

#include <stdbool.h>

enum {
    curve_key_text_bytes = 40, /* Z85 text of a 32-byte key */
    curve_name_bytes_max = 64, /* a certificate's "name" metadata */
};

typedef struct {
    bool insecure; /* plaintext: the keys below are empty */
    char name[curve_name_bytes_max + 1];
    char public_key[curve_key_text_bytes + 1];
    char secret_key[curve_key_text_bytes + 1];
    char broker_public_key[curve_key_text_bytes + 1];
} curve_identity_t;

/* Loads the secret certificate 'cert_path' and the broker's key, given
 * either as 'broker_key' (Z85 text) or as the public certificate file
 * 'broker_cert_path' (one of the two may be NULL). Returns false, after
 * logging what is wrong, when a file is missing, has no secret key, or a
 * key is not 40 Z85 characters. */
bool curve_identity_load(const char *cert_path, const char *broker_key,
                         const char *broker_cert_path, curve_identity_t *out);

/* Reads the identity from the environment (see the top of this file).
 * Returns false, after logging a message that names the variables, when
 * there is neither a certificate nor PAYGATE_INSECURE_PLAINTEXT=1, or when
 * the certificate cannot be loaded. The insecure case logs a warning. */
bool curve_identity_from_env(curve_identity_t *out);

/* The process's identity, read from the environment on first use (once,
 * thread-safe). NULL, after logging why, when there is none: the caller
 * refuses to start or to connect. */
const curve_identity_t *curve_process_identity(void);

/* Makes 'socket' (not yet connected) a CURVE client with 'identity'; does
 * nothing for an insecure identity. Returns 0, or -1 when ZeroMQ refuses
 * a key (errno set). */
int curve_client_apply(const curve_identity_t *identity, void *socket);

/* True when 'text' is 40 characters of the Z85 alphabet. */
bool curve_key_text_valid(const char *text);

#endif
