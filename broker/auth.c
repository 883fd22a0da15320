/*
 * auth: the broker's key table and ZAP handler. See auth.h for the rules
 * and broker/README.md ("Authentication") for what peers see.
 *
 * ZAP (ZeroMQ RFC 27), one request per CURVE handshake, on a REP socket:
 *
 *   request:  "1.0" | request id | domain | address | routing id |
 *             "CURVE" | client public key (32 bytes)
 *   reply:    "1.0" | request id | "200" or "400" | status text |
 *             user id (the key's name) | metadata (empty)
 */
#include "auth.h"

#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log/log.h"
#include "wire/wire.h"

enum {
    auth_name_bytes_max = 64,
    auth_list_bytes_max = 1024, /* one metadata list */
    auth_keys_max = 4096,       /* client certificates */
    auth_path_bytes_max = 2048,
    zap_frames_max = 8,
    zap_batch_max = 64,        /* requests answered per call */
    refused_logged_max = 1024, /* unknown keys remembered for log-once */
};

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN   "paygate"

struct auth_key {
    char name[auth_name_bytes_max + 1];
    char role[auth_name_bytes_max + 1];
    char public_key[41];
    char services[auth_list_bytes_max + 1];
    char publish[auth_list_bytes_max + 1];
    char consume[auth_list_bytes_max + 1];
    char groups[auth_list_bytes_max + 1];
    char principals[auth_list_bytes_max + 1];
    bool act_for_users;
};

struct auth {
    void *zap;
    char secret_key[41];
    zhashx_t *by_name;        /* name -> auth_key_t (owned) */
    zhashx_t *by_public_key;  /* Z85 public key -> auth_key_t */
    zhashx_t *refused_logged; /* Z85 keys already logged */
    uint64_t peers_refused;
};

bool auth_list_matches(const char *list, const char *name)
{
    if (list == NULL || name == NULL || *name == '\0')
        return false;
    size_t name_len = strlen(name);
    const char *entry = list;
    while (*entry != '\0') {
        const char *end = strchr(entry, ',');
        size_t len = end ? (size_t)(end - entry) : strlen(entry);
        /* trim spaces around the entry */
        while (len > 0 && entry[0] == ' ') {
            entry++;
            len--;
        }
        while (len > 0 && entry[len - 1] == ' ')
            len--;
        if (len > 0 && entry[len - 1] == '*') {
            if (name_len >= len - 1 && memcmp(entry, name, len - 1) == 0)
                return true;
        } else if (len > 0 && len == name_len && memcmp(entry, name, len) == 0) {
            return true;
        }
        if (end == NULL)
            break;
        entry = end + 1;
    }
    return false;
}

/* Copies metadata 'field' of 'cert' into 'out' ('fallback' when absent).
 * False when it is too long. */
static bool cert_field(zcert_t *cert, const char *field, const char *fallback, char *out,
                       size_t size)
{
    const char *value = zcert_meta(cert, field);
    if (value == NULL)
        value = fallback;
    if (strlen(value) >= size)
        return false;
    snprintf(out, size, "%s", value);
    return true;
}

/* Reads client certificate 'path' into a new key. NULL after logging. */
static auth_key_t *auth_key_load(const char *path)
{
    zcert_t *cert = zcert_load(path);
    if (cert == NULL) {
        log_error("auth: %s is not a certificate (CZMQ zcert format)", path);
        return NULL;
    }
    auth_key_t *key = calloc(1, sizeof *key);
    bool ok = key != NULL;
    if (ok) {
        snprintf(key->public_key, sizeof key->public_key, "%s", zcert_public_txt(cert));
        ok = cert_field(cert, "name", "", key->name, sizeof key->name) &&
             wire_service_name_valid(key->name);
        if (!ok)
            log_error("auth: %s has no valid name (metadata name = \"[a-z0-9_.-]{1,64}\")", path);
    }
    if (ok) {
        const char *act = zcert_meta(cert, "act_for_users");
        ok = cert_field(cert, "role", "service", key->role, sizeof key->role) &&
             cert_field(cert, "services", "", key->services, sizeof key->services) &&
             cert_field(cert, "publish", "", key->publish, sizeof key->publish) &&
             cert_field(cert, "consume", "", key->consume, sizeof key->consume) &&
             cert_field(cert, "groups", key->name, key->groups, sizeof key->groups) &&
             cert_field(cert, "principals", key->name, key->principals, sizeof key->principals);
        key->act_for_users = act != NULL && strcmp(act, "true") == 0;
        if (!ok)
            log_error("auth: %s has a metadata list over %d bytes", path, auth_list_bytes_max);
    }
    zcert_destroy(&cert);
    if (!ok) {
        free(key);
        return NULL;
    }
    return key;
}

static void auth_key_free(void **item)
{
    free(*item);
    *item = NULL;
}

/* Loads every "*.cert" file of 'dir' (symbolic links followed, as in a
 * Kubernetes Secret volume). */
static bool auth_load_clients(auth_t *self, const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        log_error("auth: cannot open the client certificate directory %s: %s", dir,
                  strerror(errno));
        return false;
    }
    bool ok = true;
    struct dirent *entry;
    while (ok && (entry = readdir(d)) != NULL) {
        size_t len = strlen(entry->d_name);
        if (entry->d_name[0] == '.' || len < 6 || strcmp(entry->d_name + len - 5, ".cert") != 0)
            continue;
        char path[auth_path_bytes_max];
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        auth_key_t *key = auth_key_load(path);
        if (key == NULL) {
            ok = false;
        } else if (zhashx_lookup(self->by_name, key->name) != NULL ||
                   zhashx_lookup(self->by_public_key, key->public_key) != NULL) {
            log_error("auth: %s repeats the name '%s' or a key of another certificate", path,
                      key->name);
            free(key);
            ok = false;
        } else if (zhashx_size(self->by_name) >= auth_keys_max) {
            log_error("auth: more than %d client certificates in %s", auth_keys_max, dir);
            free(key);
            ok = false;
        } else {
            zhashx_insert(self->by_name, key->name, key);
            zhashx_insert(self->by_public_key, key->public_key, key);
            log_info("auth: key '%s' (%s) may register [%s], publish [%s], consume [%s] "
                     "in groups [%s], claim [%s]%s",
                     key->name, key->role, key->services, key->publish, key->consume, key->groups,
                     key->principals, key->act_for_users ? ", act for users" : "");
        }
    }
    closedir(d);
    if (ok && zhashx_size(self->by_name) == 0) {
        log_error("auth: no client certificate (*.cert) in %s: nobody could connect", dir);
        ok = false;
    }
    return ok;
}

auth_t *auth_new(void *zmq_ctx, const char *cert_path, const char *clients_dir)
{
    auth_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->by_name = zhashx_new();
    self->by_public_key = zhashx_new();
    self->refused_logged = zhashx_new();
    if (self->by_name == NULL || self->by_public_key == NULL || self->refused_logged == NULL) {
        auth_destroy(&self);
        return NULL;
    }
    zhashx_set_destructor(self->by_name, auth_key_free);
    zcert_t *cert = zcert_load(cert_path);
    if (cert == NULL) {
        log_error("auth: cannot load the broker's certificate %s", cert_path);
        auth_destroy(&self);
        return NULL;
    }
    snprintf(self->secret_key, sizeof self->secret_key, "%s", zcert_secret_txt(cert));
    zcert_destroy(&cert);
    if (strcmp(self->secret_key, "0000000000000000000000000000000000000000") == 0) {
        log_error("auth: %s has no secret key: give the broker's secret certificate", cert_path);
        auth_destroy(&self);
        return NULL;
    }
    if (!auth_load_clients(self, clients_dir)) {
        auth_destroy(&self);
        return NULL;
    }
    self->zap = zmq_socket(zmq_ctx, ZMQ_REP);
    int zero = 0;
    if (self->zap == NULL || zmq_setsockopt(self->zap, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_bind(self->zap, ZAP_ENDPOINT) != 0) {
        log_error("auth: cannot bind the ZAP handler: %s", zmq_strerror(errno));
        auth_destroy(&self);
        return NULL;
    }
    log_info("auth: CURVE on; %zu client keys from %s", zhashx_size(self->by_name), clients_dir);
    return self;
}

void auth_destroy(auth_t **self_p)
{
    auth_t *self = *self_p;
    if (self == NULL)
        return;
    if (self->zap != NULL)
        zmq_close(self->zap);
    zhashx_destroy(&self->by_public_key);
    zhashx_destroy(&self->by_name);
    zhashx_destroy(&self->refused_logged);
    free(self);
    *self_p = NULL;
}

int auth_server_apply(auth_t *self, void *socket)
{
    int one = 1;
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, self->secret_key, 40) != 0 ||
        zmq_setsockopt(socket, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0)
        return -1;
    return 0;
}

void *auth_zap_socket(auth_t *self)
{
    return self->zap;
}

/* Logs a refused key once (later refusals of it are only counted). */
static void auth_log_refused(auth_t *self, const char *public_key, const char *address,
                             const char *why)
{
    if (zhashx_lookup(self->refused_logged, public_key) != NULL)
        return;
    if (zhashx_size(self->refused_logged) >= refused_logged_max)
        zhashx_purge(self->refused_logged);
    zhashx_insert(self->refused_logged, public_key, (void *)1);
    log_warn("auth: refused a connection from %s with key %s: %s (further ones only counted)",
             address, public_key, why);
}

/* Answers one ZAP request of 'count' frames. */
static void auth_zap_answer(auth_t *self, zmq_msg_t *frames, size_t count)
{
    const char *status = "400", *text = "unknown key", *user_id = "";
    char public_key[41] = "", address[64] = "?", mechanism[16] = "";
    if (count >= 6) {
        snprintf(address, sizeof address, "%.*s", (int)zmq_msg_size(&frames[3]),
                 (const char *)zmq_msg_data(&frames[3]));
        snprintf(mechanism, sizeof mechanism, "%.*s", (int)zmq_msg_size(&frames[5]),
                 (const char *)zmq_msg_data(&frames[5]));
    }
    if (count != 7 || strcmp(mechanism, "CURVE") != 0 || zmq_msg_size(&frames[6]) != 32) {
        text = "not a CURVE handshake";
        auth_log_refused(self, mechanism[0] ? mechanism : "(none)", address, text);
    } else {
        zmq_z85_encode(public_key, zmq_msg_data(&frames[6]), 32);
        const auth_key_t *key = zhashx_lookup(self->by_public_key, public_key);
        if (key != NULL) {
            status = "200";
            text = "OK";
            user_id = key->name;
        } else {
            auth_log_refused(self, public_key, address, text);
        }
    }
    if (strcmp(status, "200") != 0)
        self->peers_refused++;
    const void *request_id = count >= 2 ? zmq_msg_data(&frames[1]) : "";
    size_t request_id_len = count >= 2 ? zmq_msg_size(&frames[1]) : 0;
    zmq_send(self->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(self->zap, request_id, request_id_len, ZMQ_SNDMORE);
    zmq_send(self->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(self->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(self->zap, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(self->zap, "", 0, 0);
}

void auth_zap_serve(auth_t *self)
{
    for (int n = 0; n < zap_batch_max; n++) {
        zmq_msg_t frames[zap_frames_max];
        size_t count = 0;
        int more = 1;
        while (more) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, self->zap, count == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(&part);
                for (size_t i = 0; i < count; i++)
                    zmq_msg_close(&frames[i]);
                return; /* EAGAIN: none waiting */
            }
            more = zmq_msg_more(&part);
            if (count < zap_frames_max) {
                zmq_msg_init(&frames[count]);
                zmq_msg_move(&frames[count++], &part);
                zmq_msg_close(&part);
            } else {
                zmq_msg_close(&part);
                count = zap_frames_max; /* too many frames: refused below */
            }
        }
        auth_zap_answer(self, frames, count);
        for (size_t i = 0; i < count; i++)
            zmq_msg_close(&frames[i]);
    }
}

const auth_key_t *auth_key_find(const auth_t *self, const char *user_id)
{
    if (user_id == NULL || *user_id == '\0')
        return NULL;
    return zhashx_lookup(self->by_name, user_id);
}

const char *auth_key_name(const auth_key_t *key)
{
    return key->name;
}

bool auth_may_register(const auth_key_t *key, const char *service)
{
    return auth_list_matches(key->services, service);
}

bool auth_may_publish(const auth_key_t *key, const char *topic)
{
    return auth_list_matches(key->publish, topic);
}

bool auth_may_consume(const auth_key_t *key, const char *topic, const char *group)
{
    return auth_list_matches(key->consume, topic) && auth_list_matches(key->groups, group);
}

bool auth_may_claim(const auth_key_t *key, const char *principal)
{
    return auth_list_matches(key->principals, principal);
}

bool auth_may_act_for_users(const auth_key_t *key)
{
    return key->act_for_users;
}

uint64_t auth_peers_refused(const auth_t *self)
{
    return self->peers_refused;
}
