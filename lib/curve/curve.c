/*
 * curve: the process's CURVE identity. See curve.h.
 */
#include "curve.h"

#include <czmq.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "log/log.h"

enum { curve_path_bytes_max = 1024 };

bool curve_key_text_valid(const char *text)
{
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              ".-:+=^!/*?&<>()[]{}@%$#";
    if (text == NULL || strlen(text) != curve_key_text_bytes)
        return false;
    for (const char *c = text; *c; c++)
        if (strchr(z85, *c) == NULL)
            return false;
    return true;
}

/* Loads certificate 'path'. zcert_load tries "<path>_secret" first, so a
 * path that names the secret file itself is read as is. NULL, after
 * logging, when the file cannot be read. */
static zcert_t *curve_cert_load(const char *path, const char *what)
{
    if (access(path, R_OK) != 0) {
        log_error("curve: cannot read %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    zcert_t *cert = zcert_load(path);
    if (cert == NULL)
        log_error("curve: %s %s is not a certificate (CZMQ zcert format)", what, path);
    return cert;
}

bool curve_identity_load(const char *cert_path, const char *broker_key,
                         const char *broker_cert_path, curve_identity_t *out)
{
    memset(out, 0, sizeof *out);
    zcert_t *cert = curve_cert_load(cert_path, "certificate");
    if (cert == NULL)
        return false;
    snprintf(out->public_key, sizeof out->public_key, "%s", zcert_public_txt(cert));
    snprintf(out->secret_key, sizeof out->secret_key, "%s", zcert_secret_txt(cert));
    const char *name = zcert_meta(cert, "name");
    snprintf(out->name, sizeof out->name, "%s", name ? name : "(unnamed)");
    zcert_destroy(&cert);
    /* A public certificate loads with an all-zero secret key. */
    if (!curve_key_text_valid(out->secret_key) ||
        strcmp(out->secret_key, "0000000000000000000000000000000000000000") == 0) {
        log_error("curve: %s has no secret key: give the secret certificate "
                  "(<name>.cert_secret), not the public one",
                  cert_path);
        return false;
    }
    if (broker_key != NULL && *broker_key != '\0') {
        snprintf(out->broker_public_key, sizeof out->broker_public_key, "%s", broker_key);
    } else if (broker_cert_path != NULL && *broker_cert_path != '\0') {
        zcert_t *broker = curve_cert_load(broker_cert_path, "broker certificate");
        if (broker == NULL)
            return false;
        snprintf(out->broker_public_key, sizeof out->broker_public_key, "%s",
                 zcert_public_txt(broker));
        zcert_destroy(&broker);
    }
    if (!curve_key_text_valid(out->broker_public_key)) {
        log_error("curve: the broker's public key is missing or not 40 Z85 characters: set "
                  "PAYGATE_BROKER_PUBLIC_KEY or PAYGATE_BROKER_CERT");
        return false;
    }
    return true;
}

bool curve_identity_from_env(curve_identity_t *out)
{
    memset(out, 0, sizeof *out);
    const char *cert = NULL, *broker_key = NULL, *broker_cert = NULL;
    int64_t insecure = 0;
    bool ok = config_str("PAYGATE_CURVE_CERT", NULL, curve_path_bytes_max, &cert);
    ok &= config_str("PAYGATE_BROKER_PUBLIC_KEY", NULL, curve_key_text_bytes, &broker_key);
    ok &= config_str("PAYGATE_BROKER_CERT", NULL, curve_path_bytes_max, &broker_cert);
    ok &= config_int("PAYGATE_INSECURE_PLAINTEXT", 0, 0, 1, &insecure);
    if (!ok)
        return false;
    if (cert != NULL)
        return curve_identity_load(cert, broker_key, broker_cert, out);
    if (insecure == 1) {
        out->insecure = true;
        snprintf(out->name, sizeof out->name, "insecure");
        log_warn("**************************************************************************");
        log_warn("INSECURE: PAYGATE_INSECURE_PLAINTEXT=1: talking to the broker in PLAINTEXT,");
        log_warn("without authentication. Anyone on the network can read and forge calls.");
        log_warn("Use it only for tests. Set PAYGATE_CURVE_CERT to run securely.");
        log_warn("**************************************************************************");
        return true;
    }
    log_error("curve: no broker credentials: set PAYGATE_CURVE_CERT (this process's secret "
              "certificate, made by paygate-certs) and PAYGATE_BROKER_CERT or "
              "PAYGATE_BROKER_PUBLIC_KEY; or, for tests only, PAYGATE_INSECURE_PLAINTEXT=1");
    return false;
}

static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static curve_identity_t process_identity;
static bool process_identity_ok;

static void curve_process_load(void)
{
    process_identity_ok = curve_identity_from_env(&process_identity);
}

const curve_identity_t *curve_process_identity(void)
{
    pthread_once(&process_once, curve_process_load);
    return process_identity_ok ? &process_identity : NULL;
}

int curve_client_apply(const curve_identity_t *identity, void *socket)
{
    if (identity->insecure)
        return 0;
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, identity->broker_public_key,
                       curve_key_text_bytes) != 0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, identity->public_key, curve_key_text_bytes) !=
            0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, identity->secret_key, curve_key_text_bytes) !=
            0)
        return -1;
    return 0;
}
