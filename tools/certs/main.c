/*
 * paygate-certs: makes the CURVE certificates of a paygate installation.
 *
 * The story: read the directory (and, for one extra certificate, its name
 * and rights) from the command line, create what is missing, print what
 * was made. Existing certificates are kept, so running it again (./dev up
 * does, every time) changes nothing; delete a file to replace that key.
 *
 * Layout of DIR (the names are what processes and manifests expect):
 *
 *   DIR/broker.cert            the broker's public certificate: every
 *                              process's PAYGATE_BROKER_CERT
 *   DIR/broker.cert_secret     the broker's PAYGATE_CURVE_CERT
 *   DIR/clients/NAME.cert      public certificates of the keys the broker
 *                              admits: its PAYGATE_CURVE_CLIENTS_DIR
 *   DIR/NAME.cert_secret       each process's PAYGATE_CURVE_CERT (mode 600)
 *
 * What each key may do is in its certificate's metadata (broker/auth.h).
 * It must never overwrite a key that exists.
 */
#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { path_bytes_max = 2048, fields_max = 16, name_bytes_max = 64 };

/* One certificate to make: its name and "field=value" rights. */
typedef struct {
    const char *name;
    const char *fields[fields_max]; /* NULL-ended */
} cert_spec_t;

/* The standard set: the broker's clients in a full installation. */
static const cert_spec_t standard_set[] = {
    {"user", {"role=service", "services=user", "publish=wallet", NULL}},
    {"order", {"role=service", "services=order", NULL}},
    /* payment calls order for the user who called it (order checks the
     * owner): it forwards that user's id, so it may act for users. */
    {"payment",
     {"role=service", "services=payment", "publish=payments", "act_for_users=true", NULL}},
    {"transaction", {"role=service", "services=transaction", "consume=payments,wallet", NULL}},
    {"notification", {"role=service", "services=notification", "consume=payments,wallet", NULL}},
    {"gateway", {"role=gateway", "act_for_users=true", NULL}},
    {"paygatectl",
     {"role=operator", "principals=paygatectl*", "act_for_users=true", "consume=*",
      "groups=paygatectl-*", NULL}},
};

static const char *const known_fields[] = {"role",   "services",   "publish",       "consume",
                                           "groups", "principals", "act_for_users", NULL};

static void usage(FILE *out)
{
    fputs("usage: paygate-certs DIR\n"
          "       paygate-certs DIR NAME [FIELD=VALUE ...]\n"
          "Makes the CURVE certificates of paygate under DIR, keeping those that exist.\n"
          "The first form makes the broker's and the standard set (user, order, payment,\n"
          "transaction, notification, gateway, paygatectl); the second one more client\n"
          "certificate NAME with the given rights. FIELDs (comma-separated lists; an\n"
          "entry ending in * matches a prefix):\n"
          "  role=service|gateway|operator  services=NAMES (may register)\n"
          "  publish=TOPICS  consume=TOPICS  groups=GROUPS (default NAME)\n"
          "  principals=NAMES (default NAME)  act_for_users=true (may call for a user)\n"
          "Files: DIR/broker.cert (PAYGATE_BROKER_CERT), DIR/broker.cert_secret (the\n"
          "broker's PAYGATE_CURVE_CERT), DIR/clients/ (PAYGATE_CURVE_CLIENTS_DIR),\n"
          "DIR/NAME.cert_secret (PAYGATE_CURVE_CERT of process NAME).\n",
          out);
}

static bool name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > name_bytes_max)
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.' ||
              *c == '-'))
            return false;
    return true;
}

static bool make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return true;
    fprintf(stderr, "paygate-certs: cannot create %s: %s\n", path, strerror(errno));
    return false;
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Writes 'cert' as 'secret_path' (mode 600) and 'public_path'. */
static bool cert_write(zcert_t *cert, const char *public_path, const char *secret_path)
{
    if (zcert_save_secret(cert, secret_path) != 0 || chmod(secret_path, 0600) != 0 ||
        zcert_save_public(cert, public_path) != 0) {
        fprintf(stderr, "paygate-certs: cannot write %s or %s: %s\n", secret_path, public_path,
                strerror(errno));
        return false;
    }
    return true;
}

/* Makes the broker's certificate unless it exists. */
static bool make_broker(const char *dir)
{
    char public_path[path_bytes_max], secret_path[path_bytes_max];
    snprintf(public_path, sizeof public_path, "%s/broker.cert", dir);
    snprintf(secret_path, sizeof secret_path, "%s/broker.cert_secret", dir);
    if (file_exists(secret_path) && file_exists(public_path))
        return true;
    zcert_t *cert = zcert_new();
    if (cert == NULL)
        return false;
    zcert_set_meta(cert, "name", "broker");
    zcert_set_meta(cert, "role", "broker");
    bool ok = cert_write(cert, public_path, secret_path);
    if (ok)
        printf("paygate-certs: made %s (public key %s)\n", secret_path, zcert_public_txt(cert));
    zcert_destroy(&cert);
    return ok;
}

/* Makes client certificate 'spec' unless it exists. */
static bool make_client(const char *dir, const cert_spec_t *spec)
{
    if (!name_valid(spec->name) || strcmp(spec->name, "broker") == 0) {
        fprintf(stderr, "paygate-certs: invalid name '%s' (1..64 of [a-z0-9_.-], not broker)\n",
                spec->name);
        return false;
    }
    char public_path[path_bytes_max], secret_path[path_bytes_max];
    snprintf(public_path, sizeof public_path, "%s/clients/%s.cert", dir, spec->name);
    snprintf(secret_path, sizeof secret_path, "%s/%s.cert_secret", dir, spec->name);
    if (file_exists(secret_path) && file_exists(public_path))
        return true;
    zcert_t *cert = zcert_new();
    if (cert == NULL)
        return false;
    zcert_set_meta(cert, "name", "%s", spec->name);
    bool ok = true;
    for (size_t i = 0; ok && i < fields_max && spec->fields[i] != NULL; i++) {
        const char *field = spec->fields[i];
        const char *eq = strchr(field, '=');
        size_t key_len = eq ? (size_t)(eq - field) : 0;
        bool known = false;
        for (size_t k = 0; eq != NULL && known_fields[k] != NULL; k++)
            known |=
                strlen(known_fields[k]) == key_len && strncmp(known_fields[k], field, key_len) == 0;
        if (!known) {
            fprintf(stderr, "paygate-certs: '%s' is not FIELD=VALUE with a known FIELD\n", field);
            ok = false;
            break;
        }
        char key[32];
        snprintf(key, sizeof key, "%.*s", (int)key_len, field);
        zcert_set_meta(cert, key, "%s", eq + 1);
    }
    if (ok)
        ok = cert_write(cert, public_path, secret_path);
    if (ok)
        printf("paygate-certs: made %s\n", secret_path);
    zcert_destroy(&cert);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (argc - 3 > fields_max) {
        fprintf(stderr, "paygate-certs: at most %d fields\n", fields_max);
        return 2;
    }
    const char *dir = argv[1];
    char clients[path_bytes_max];
    snprintf(clients, sizeof clients, "%s/clients", dir);
    if (!make_dir(dir) || !make_dir(clients) || !make_broker(dir))
        return 1;
    if (argc == 2) {
        for (size_t i = 0; i < sizeof standard_set / sizeof standard_set[0]; i++)
            if (!make_client(dir, &standard_set[i]))
                return 1;
        return 0;
    }
    cert_spec_t spec = {.name = argv[2]};
    for (int i = 3; i < argc; i++)
        spec.fields[i - 3] = argv[i];
    return make_client(dir, &spec) ? 0 : 1;
}
