/* The daemon's settings: defaults, a strict table-driven INI parser and the printer.
 * One table lists every setting once (section, key, type, range, help), so the parser, the
 * printer and the documentation cannot drift apart. */
#include "firmware/config.h"
#include "common/safe_open.h"

#include "common/errmsg.h"
#include "update/update.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum cfg_type { CFG_STR, CFG_U32, CFG_U64, CFG_OCT, CFG_BOOL, CFG_UIDS, CFG_GIDS, CFG_UNIT /* double in [0, 1], or "off" (-1) */ };

struct cfg_entry {
    const char *section, *key;
    enum cfg_type type;
    size_t off, size;      /* field offset and byte size (strings) */
    uint64_t min, max;     /* numeric range, inclusive */
    const char *help;
};

#define F(field) offsetof(struct serve_config, field), sizeof(((struct serve_config *)0)->field)

static const struct cfg_entry entries[] = {
    { "model", "path", CFG_STR, F(model_path), 0, 0, "GGUF model file (flag -m)" },
    { "model", "backend", CFG_STR, F(backend), 0, 0, "auto (vulkan on a GPU or, on a CPU driver, for models of 64 MiB or more; else the CPU reference), ref or vulkan" },
    { "model", "slot", CFG_STR, F(slot), 0, 0, "label of the active update slot, reported in /health and the audit log" },
    { "model", "expert_cache_mb", CFG_U64, F(expert_cache_mb), 0, 1ull << 30, "routed-expert cache in MiB; 0 = every expert resident (no paging)" },
    { "model", "expert_verify", CFG_BOOL, F(expert_verify), 0, 1, "paged experts: checksum each at load (one read of all experts) and fail a request whose expert bytes differ" },
    { "model", "kv_type", CFG_STR, F(kv_type), 0, 0, "storage of compressed entries and indexer keys: f32, f16 (half the memory) or fp8 (E4M3 with a scale per entry, about a quarter); see docs/long-context.md for what each costs in accuracy" },
    { "model", "n_ctx", CFG_U32, F(n_ctx), 0, 1u << 20, "positions per conversation; 0 = the largest whose memory plan fits every slot, up to the model's" },
    { "server", "socket", CFG_STR, F(socket_path), 0, 0, "API Unix socket path (flag --socket)" },
    { "server", "socket_group", CFG_STR, F(socket_group), 0, 0, "group owning the socket; empty = the daemon's group" },
    { "server", "socket_mode", CFG_OCT, F(socket_mode), 0, 0777, "permission bits of the socket file (octal)" },
    { "server", "listen", CFG_STR, F(listen), 0, 0, "loopback TCP address 127.0.0.1:PORT; empty = Unix socket only (flag --listen)" },
    { "server", "admin_socket", CFG_STR, F(admin_socket), 0, 0, "update admin socket (mode 0600, root or the daemon's uid) when update.data_dir is set; empty = /run/flashbox/admin.sock as root, else admin.sock next to server.socket; none = off" },
    { "server", "max_connections", CFG_U32, F(max_connections), 1, 4096, "open connections at once" },
    { "server", "connection_timeout_s", CFG_U32, F(connection_timeout_s), 1, 3600, "a connection idle this long (slow headers or body) is closed" },
    { "server", "slots", CFG_U32, F(slots), 1, 256, "conversations decoded together (one session each)" },
    { "server", "step_tokens", CFG_U32, F(step_tokens), 1, 65536, "tokens per scheduler step: every running conversation's next token, then chunks of waiting prompts up to this budget (restart to change)" },
    { "server", "queue_depth", CFG_U32, F(queue_depth), 0, 65536, "requests waiting for a slot; one more is answered 429" },
    { "server", "request_deadline_s", CFG_U32, F(request_deadline_s), 1, 86400, "wall time a generation request may take (queue + run)" },
    { "server", "device_recover_tries", CFG_U32, F(device_recover_tries), 0, 100, "after a GPU device loss: times the backend is reopened before the daemon stays degraded (0 = never)" },
    { "server", "shutdown_grace_s", CFG_U32, F(shutdown_grace_s), 0, 3600, "SIGTERM: time in-flight requests get to finish before they are cancelled" },
    { "server", "sse_ping_s", CFG_U32, F(sse_ping_s), 1, 3600, "SSE keep-alive comment interval while a stream waits" },
    { "limits", "max_body_bytes", CFG_U64, F(max_body_bytes), 64, 1u << 30, "request body cap (413 above)" },
    { "limits", "max_prompt_tokens", CFG_U32, F(max_prompt_tokens), 0, 1u << 20, "prompt token cap; 0 = context - 1" },
    { "limits", "max_tokens", CFG_U32, F(max_tokens), 1, 1u << 20, "largest max_tokens a request may ask for" },
    { "limits", "default_max_tokens", CFG_U32, F(default_max_tokens), 1, 1u << 20, "max_tokens when the request gives none" },
    { "limits", "max_stop", CFG_U32, F(max_stop), 0, 16, "stop strings per request" },
    { "limits", "max_stop_len", CFG_U32, F(max_stop_len), 1, 1024, "bytes per stop string" },
    { "limits", "max_messages", CFG_U32, F(max_messages), 1, 65536, "chat messages per request" },
    { "limits", "max_requests_per_uid", CFG_U32, F(max_requests_per_uid), 0, 65536, "generation requests one peer uid may have queued or running (429 above); 0 = no cap" },
    { "access", "allow_uids", CFG_UIDS, 0, 0, 0, 0, "peer uids allowed (SO_PEERCRED), comma-separated; both lists empty = socket permissions decide" },
    { "access", "allow_gids", CFG_GIDS, 0, 0, 0, 0, "peer primary or supplementary gids allowed, comma-separated" },
    { "update", "data_dir", CFG_STR, F(update_data_dir), 0, 0, "signed-update slot store (e.g. /var/lib/flashbox): serve its active slot with the boot protocol; empty = serve model.path" },
    { "update", "keys_dir", CFG_STR, F(update_keys_dir), 0, 0, "trusted public keys of the slot store" },
    { "update", "product", CFG_STR, F(update_product), 0, 0, "this box's product id" },
    { "update", "operation_timeout_s", CFG_U32, F(update_operation_timeout_s), 1, 86400, "an install or rollback through the admin socket is cancelled (the store left as a crash would) when it runs longer than this" },
    { "update", "reload_grace_s", CFG_U32, F(update_reload_grace_s), 0, 3600, "after an install or rollback through the admin socket: time in-flight requests get to finish on the old model" },
    { "update", "max_boot_attempts", CFG_U32, F(update_max_boot_attempts), 1, 100, "failed starts of a new slot before falling back to the other" },
    { "update", "lock_wait_s", CFG_U32, F(update_lock_wait_s), 1, 86400, "at start (and after a hot reload): longest wait for the slot store's lock while another update operation holds it; then the daemon exits naming the holder (systemd starts it again)" },
    { "cache", "mem_mb", CFG_U64, F(cache_mem_mb), 0, 1ull << 30, "prefix reuse: MiB of saved session states (least recently used evicted first); 0 = off" },
    { "cache", "dir", CFG_STR, F(cache_dir), 0, 0, "prefix reuse: also keep saved states in files here (atomic, checksummed, bound to the model file); empty = memory only" },
    { "cache", "disk_mb", CFG_U64, F(cache_disk_mb), 0, 1ull << 40, "MiB of state files in cache.dir (least recently used deleted first)" },
    { "update", "eval_set", CFG_STR, F(update_eval_set), 0, 0, "the site's evaluation set (JSON lines, e.g. /etc/flashbox/eval/site.jsonl) a new slot must pass before it is activated; empty = no evaluation" },
    { "update", "eval_min_score", CFG_UNIT, F(update_eval_min_score), 0, 0, "lowest score (0 to 1) on eval_set that a new slot may have" },
    { "update", "eval_max_regression", CFG_UNIT, F(update_eval_max_regression), 0, 0, "most a new slot's score may fall below the active slot's last score on the same set (0 to 1); off = not checked" },
    { "update", "eval_jobs", CFG_U32, F(update_eval_jobs), 1, 64, "engines evaluating at once during an install (each holds its own model state)" },
    { "update", "pause_serving", CFG_STR, F(update_pause_serving), 0, 0, "an install through the admin socket: auto (release the served model during the self-test and evaluation when the memory plan says the new model does not fit beside it), always, or never" },
    { "audit", "log", CFG_STR, F(audit_log), 0, 0, "audit log: stderr (journald) or a file path, JSON lines" },
    { "audit", "log_prompts", CFG_BOOL, F(log_prompts), 0, 1, "also record prompt text (off: never)" },
};

void config_default_socket(char *out, size_t out_len)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (geteuid() == 0) snprintf(out, out_len, "/run/flashbox/api.sock");
    else if (xdg && *xdg == '/') snprintf(out, out_len, "%s/flashbox/api.sock", xdg);
    else snprintf(out, out_len, "run/api.sock");
}

void config_default_admin_socket(const char *api_socket, char *out, size_t out_len)
{
    const char *slash = strrchr(api_socket, '/');
    if (geteuid() == 0) snprintf(out, out_len, "/run/flashbox/admin.sock");
    else if (slash) snprintf(out, out_len, "%.*s/admin.sock", (int)(slash - api_socket), api_socket);
    else snprintf(out, out_len, "admin.sock");
}

void config_default(struct serve_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->backend, sizeof c->backend, "auto");
    snprintf(c->kv_type, sizeof c->kv_type, "f32");
    snprintf(c->slot, sizeof c->slot, "none");
    config_default_socket(c->socket_path, sizeof c->socket_path);
    c->socket_mode = 0660;
    c->max_connections = 64;
    c->connection_timeout_s = 30;
    c->slots = 4;
    c->step_tokens = 128;
    c->cache_mem_mb = 256;
    c->cache_disk_mb = 4096;
    c->queue_depth = 64;
    c->request_deadline_s = 600;
    c->shutdown_grace_s = 10;
    c->sse_ping_s = 15;
    c->max_body_bytes = 1u << 20;
    c->max_tokens = 4096;
    c->default_max_tokens = 256;
    c->max_stop = 16; /* code assistants send 7 or more */
    c->max_stop_len = 64;
    c->max_messages = 256;
    snprintf(c->audit_log, sizeof c->audit_log, "stderr");
    struct update_config uc;
    update_config_default(&uc);
    snprintf(c->update_keys_dir, sizeof c->update_keys_dir, "%s", uc.keys_dir);
    snprintf(c->update_product, sizeof c->update_product, "%s", uc.product);
    c->update_max_boot_attempts = uc.max_boot_attempts;
    c->update_lock_wait_s = uc.lock_wait_s;
    c->update_eval_min_score = 0;
    c->update_eval_max_regression = -1;
    c->update_eval_jobs = 1;
    snprintf(c->update_pause_serving, sizeof c->update_pause_serving, "auto");
    c->update_reload_grace_s = 30;
    c->update_operation_timeout_s = 3600;
    c->device_recover_tries = 3;
}

static int parse_u64(const char *v, int base, uint64_t *out)
{
    if (!*v || *v == '-' || *v == '+' || isspace((unsigned char)*v)) return -1;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(v, &end, base);
    if (errno || *end) return -1;
    *out = x;
    return 0;
}

static int parse_ids(const char *v, uint32_t *ids, uint32_t *n, const char *name, char *err, size_t err_len)
{
    *n = 0;
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        char tok[32];
        size_t l = strcspn(p, ", ");
        if (l >= sizeof tok) return errf(err, err_len, "%s: id '%.*s' too long", name, (int)l, p);
        memcpy(tok, p, l);
        tok[l] = 0;
        uint64_t x;
        if (parse_u64(tok, 10, &x) || x >= UINT32_MAX) return errf(err, err_len, "%s: '%s' is not a numeric id", name, tok);
        if (*n >= CONFIG_MAX_IDS) return errf(err, err_len, "%s: more than %d ids", name, CONFIG_MAX_IDS);
        ids[(*n)++] = (uint32_t)x;
        p += l;
    }
    return 0;
}

int config_set(struct serve_config *c, const char *section, const char *key, const char *value, char *err, size_t err_len)
{
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        const struct cfg_entry *e = &entries[i];
        if ((section && strcmp(section, e->section)) || strcmp(key, e->key)) continue;
        char *field = (char *)c + e->off;
        uint64_t x;
        switch (e->type) {
        case CFG_STR:
            if (strlen(value) >= e->size) return errf(err, err_len, "%s.%s: %zu bytes, at most %zu", e->section, e->key, strlen(value), e->size - 1);
            if (!strcmp(e->key, "pause_serving") && strcmp(value, "auto") && strcmp(value, "always") && strcmp(value, "never"))
                return errf(err, err_len, "%s.%s: '%s', expected auto, always or never", e->section, e->key, value);
            snprintf(field, e->size, "%s", value);
            return 0;
        case CFG_BOOL:
            if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1")) *(bool *)field = true;
            else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0")) *(bool *)field = false;
            else return errf(err, err_len, "%s.%s: '%s', expected true or false", e->section, e->key, value);
            return 0;
        case CFG_U32: case CFG_U64: case CFG_OCT:
            if (parse_u64(value, e->type == CFG_OCT ? 8 : 10, &x))
                return errf(err, err_len, "%s.%s: '%s' is not a%s number", e->section, e->key, value, e->type == CFG_OCT ? "n octal" : "");
            if (x < e->min || x > e->max)
                return errf(err, err_len, "%s.%s: %" PRIu64 " out of range [%" PRIu64 ", %" PRIu64 "]", e->section, e->key, x, e->min, e->max);
            if (e->type == CFG_U64) *(uint64_t *)field = x;
            else *(uint32_t *)field = (uint32_t)x;
            return 0;
        case CFG_UNIT: {
            char *end;
            double v = strtod(value, &end);
            if (!strcmp(value, "off")) v = -1;
            else if (end == value || *end || !(v >= 0 && v <= 1))
                return errf(err, err_len, "%s.%s: '%s', expected a number from 0 to 1 or off", e->section, e->key, value);
            *(double *)field = v;
            return 0;
        }
        case CFG_UIDS: return parse_ids(value, c->allow_uids, &c->n_allow_uids, "access.allow_uids", err, err_len);
        case CFG_GIDS: return parse_ids(value, c->allow_gids, &c->n_allow_gids, "access.allow_gids", err, err_len);
        }
    }
    return errf(err, err_len, "unknown setting '%s%s%s'", section ? section : "", section ? "." : "", key);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

int config_parse(struct serve_config *c, const char *text, size_t len, const char *name, char *err, size_t err_len)
{
    char section[32] = "";
    size_t pos = 0;
    int lineno = 0;
    while (pos < len) {
        size_t l = 0;
        while (pos + l < len && text[pos + l] != '\n') l++;
        lineno++;
        char line[1024];
        if (l >= sizeof line) return errf(err, err_len, "%s:%d: line longer than %zu bytes", name, lineno, sizeof line - 1);
        memcpy(line, text + pos, l);
        line[l] = 0;
        pos += l + 1;
        if (memchr(line, 0, l)) return errf(err, err_len, "%s:%d: NUL byte", name, lineno);
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close || close[1]) return errf(err, err_len, "%s:%d: malformed section header '%s'", name, lineno, s);
            *close = 0;
            char *sec = trim(s + 1);
            int known = 0;
            for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) known |= !strcmp(entries[i].section, sec);
            if (!known) return errf(err, err_len, "%s:%d: unknown section [%s]", name, lineno, sec);
            snprintf(section, sizeof section, "%s", sec);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) return errf(err, err_len, "%s:%d: expected 'key = value', got '%s'", name, lineno, s);
        if (!*section) return errf(err, err_len, "%s:%d: setting before any [section]", name, lineno);
        *eq = 0;
        char *key = trim(s), *value = trim(eq + 1);
        size_t vl = strlen(value);
        if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') {
            value[vl - 1] = 0;
            value++;
        }
        if (config_set(c, section, key, value, err, err_len)) return errf_prefix(err, err_len, "%s:%d", name, lineno);
    }
    return 0;
}

int config_load_file(struct serve_config *c, const char *path, char *err, size_t err_len)
{
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return errf(err, err_len, "%s: %s", path, strerror(errno));
    }
    enum { CAP = 256 * 1024 };
    char *buf = malloc(CAP + 1);
    if (!buf) {
        fclose(f);
        return errf(err, err_len, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, CAP + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) rc = errf(err, err_len, "%s: read error", path);
    else if (n > CAP) rc = errf(err, err_len, "%s: larger than %d bytes", path, CAP);
    else rc = config_parse(c, buf, n, path, err, err_len);
    free(buf);
    return rc;
}

static void print_ids(FILE *out, const uint32_t *ids, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) fprintf(out, "%s%" PRIu32, i ? "," : "", ids[i]);
}

void config_print(const struct serve_config *c, FILE *out)
{
    fprintf(out, "# flashbox serve configuration (every setting, with its current value).\n"
                 "# Format: [section] then key = value; unknown keys are errors. Flags override.\n");
    const char *cur = "";
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        const struct cfg_entry *e = &entries[i];
        if (strcmp(cur, e->section)) {
            fprintf(out, "\n[%s]\n", e->section);
            cur = e->section;
        }
        fprintf(out, "# %s\n%s = ", e->help, e->key);
        const char *field = (const char *)c + e->off;
        switch (e->type) {
        case CFG_STR: fprintf(out, "%s", field); break;
        case CFG_BOOL: fprintf(out, "%s", *(const bool *)field ? "true" : "false"); break;
        case CFG_U32: fprintf(out, "%" PRIu32, *(const uint32_t *)field); break;
        case CFG_U64: fprintf(out, "%" PRIu64, *(const uint64_t *)field); break;
        case CFG_OCT: fprintf(out, "0%o", (unsigned)*(const uint32_t *)field); break;
        case CFG_UNIT:
            if (*(const double *)field < 0) fprintf(out, "off");
            else fprintf(out, "%g", *(const double *)field);
            break;
        case CFG_UIDS: print_ids(out, c->allow_uids, c->n_allow_uids); break;
        case CFG_GIDS: print_ids(out, c->allow_gids, c->n_allow_gids); break;
        }
        fputc('\n', out);
    }
}

int config_validate(const struct serve_config *c, char *err, size_t err_len)
{
    if (!c->model_path[0] && !c->update_data_dir[0])
        return errf(err, err_len, "model.path: empty, give -m MODEL (or update.data_dir to serve the active slot)");
    if (!c->socket_path[0]) return errf(err, err_len, "server.socket: empty");
    if (c->default_max_tokens > c->max_tokens)
        return errf(err, err_len, "limits.default_max_tokens %u exceeds limits.max_tokens %u", c->default_max_tokens, c->max_tokens);
    if (c->listen[0]) {
        /* Loopback only: a browser on the box can still reach it, so the HTTP layer also
         * checks the Host header (DNS rebinding), but nothing off the box can. */
        if (strncmp(c->listen, "127.0.0.1:", 10))
            return errf(err, err_len, "server.listen: '%s', expected 127.0.0.1:PORT (loopback only)", c->listen);
        uint64_t port;
        if (parse_u64(c->listen + 10, 10, &port) || port == 0 || port > 65535)
            return errf(err, err_len, "server.listen: port '%s' not in 1..65535", c->listen + 10);
    }
    return 0;
}
