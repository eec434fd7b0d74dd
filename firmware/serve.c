/* `flashbox serve`: the appliance daemon's lifecycle. Reads the config (file, then flags),
 * opens the API socket (Unix, mode and group from the config; loopback TCP only when
 * asked), starts the HTTP API in "loading" state, loads the model in a loader thread,
 * then tells systemd READY=1 (Type=notify) and pings its watchdog from the scheduler loop.
 * Signals are taken synchronously by the main thread: SIGHUP reloads the config, SIGTERM
 * and SIGINT stop accepting, give in-flight work shutdown_grace_s to finish, cancel the
 * rest, flush the audit log and exit 0.
 *
 * Signed updates: with update.data_dir set the daemon serves the slot store's active slot
 * through the boot protocol: update_boot_begin() before loading (it counts the start of a
 * slot under trial and falls back to the other slot after too many failed starts) names
 * the model and the slot; update_boot_ready() after READY=1 ends the trial. Model updates
 * never come through the API socket: the admin socket (server.admin_socket, mode 0600,
 * admin.c) installs or rolls back and then hot-reloads the new active slot (reload.c)
 * while the API socket stays open.
 *
 * SIGTERM always ends the process within shutdown_grace_s plus a small bound: an update in
 * progress and in-flight requests share the grace period; then the update is cancelled at
 * its next cancellation point (ADMIN_CANCEL_BOUND_MS more) and requests are cut off. What
 * still does not return (a read from a stalled mount, a model load) is left behind: the
 * process exits without freeing what it may touch, which leaves the slot store as a
 * kill -9 there would (every install step is crash-safe). */
#include "engine/engine.h"
#include "common/errmsg.h"
#include "firmware/admin.h"
#include "firmware/audit.h"
#include "firmware/commands.h"
#include "firmware/config.h"
#include "firmware/http_api.h"
#include "firmware/reload.h"
#include "firmware/scheduler.h"
#include "firmware/textgen.h"
#include "update/update.h"

#include <errno.h>
#include <stddef.h>
#include <grp.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox serve -m MODEL [--config FILE] [--socket PATH] [--listen 127.0.0.1:PORT] [--kv T]\n"
            "                      [--set section.key=value ...] [--print-config]\n"
            "  -m, --model PATH     the GGUF model to serve (model.path)\n"
            "  --config FILE        settings file; flags override it (see --print-config)\n"
            "  --socket PATH        API Unix socket (server.socket)\n"
            "  --listen ADDR        also serve loopback TCP (server.listen; off by default)\n"
            "  --kv f32|f16|fp8     storage of compressed entries and indexer keys (model.kv_type)\n"
            "  --set S.K=V          any other setting, e.g. --set server.slots=8\n"
            "  --print-config       print every setting with its effective value and exit\n"
            "Signals: SIGTERM/SIGINT stop gracefully (server.shutdown_grace_s), SIGHUP reloads the config.\n"
            "Updates: with update.data_dir set, server.admin_socket (mode 0600) takes status, install and\n"
            "rollback (flashbox update ... --admin-socket PATH) and hot-reloads the new slot.\n");
}

/* Applies "section.key=value". */
static int apply_set(struct serve_config *c, const char *arg, char *err, size_t err_len)
{
    const char *dot = strchr(arg, '.'), *eq = strchr(arg, '=');
    if (!dot || !eq || dot > eq) return errf(err, err_len, "--set '%s': expected section.key=value", arg);
    char section[32], key[64];
    if ((size_t)(dot - arg) >= sizeof section || (size_t)(eq - dot - 1) >= sizeof key)
        return errf(err, err_len, "--set '%s': name too long", arg);
    memcpy(section, arg, (size_t)(dot - arg));
    section[dot - arg] = 0;
    memcpy(key, dot + 1, (size_t)(eq - dot - 1));
    key[eq - dot - 1] = 0;
    return config_set(c, section, key, eq + 1, err, err_len);
}

/* Builds the config from defaults, --config, then the other flags in order. */
static int build_config(int argc, char **argv, struct serve_config *c, const char **config_path, int *print_only,
                        char *err, size_t err_len)
{
    config_default(c);
    *config_path = NULL;
    *print_only = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config") && i + 1 < argc) *config_path = argv[++i];
    if (*config_path && config_load_file(c, *config_path, err, err_len)) return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "--config") && v) i++;
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) rc = config_set(c, "model", "path", argv[++i], err, err_len);
        else if (!strcmp(a, "--socket") && v) rc = config_set(c, "server", "socket", argv[++i], err, err_len);
        else if (!strcmp(a, "--listen") && v) rc = config_set(c, "server", "listen", argv[++i], err, err_len);
        else if (!strcmp(a, "--kv") && v) rc = config_set(c, "model", "kv_type", argv[++i], err, err_len);
        else if (!strcmp(a, "--set") && v) rc = apply_set(c, argv[++i], err, err_len);
        else if (!strcmp(a, "--print-config")) *print_only = 1;
        else return errf(err, err_len, "unknown or incomplete argument '%s'", a);
        if (rc) return -1;
    }
    return 0;
}

static int mkdir_parents(const char *path)
{
    char buf[CONFIG_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return 0;
    *slash = 0;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    /* The socket's own directory: only the service and its group may traverse it. */
    if (mkdir(buf, 0750) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* A listening Unix socket at path with the given mode (and group, when not empty). */
static int open_unix_socket(const char *path, const char *group, uint32_t mode, const char *setting, char *err,
                            size_t err_len)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        return errf(err, err_len, "%s: path longer than %zu bytes", setting, sizeof sa.sun_path - 1);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (mkdir_parents(path)) return errf(err, err_len, "%s: cannot create its directory: %s", path, strerror(errno));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errf(err, err_len, "socket: %s", strerror(errno));
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            close(fd);
            return errf(err, err_len, "%s: exists and is not a socket", path);
        }
        /* A socket file is left over from a crash unless someone still answers on it. */
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            close(fd);
            return errf(err, err_len, "%s: another daemon is listening there", path);
        }
        close(fd);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return errf(err, err_len, "socket: %s", strerror(errno));
    }
    /* Bind under a umask that leaves the socket unreachable until chmod sets its mode. */
    mode_t old = umask(0777);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc != 0) {
        close(fd);
        return errf(err, err_len, "%s: bind: %s", path, strerror(errno));
    }
    if (group[0]) {
        struct group gr, *res = NULL;
        char buf[4096];
        if (getgrnam_r(group, &gr, buf, sizeof buf, &res) != 0 || !res) {
            close(fd);
            unlink(path);
            return errf(err, err_len, "%s: no group '%s'", setting, group);
        }
        if (chown(path, (uid_t)-1, gr.gr_gid) != 0) {
            close(fd);
            unlink(path);
            return errf(err, err_len, "%s: chown to group %s: %s", path, group, strerror(errno));
        }
    }
    if (chmod(path, (mode_t)mode) != 0 || listen(fd, 128) != 0) {
        close(fd);
        unlink(path);
        return errf(err, err_len, "%s: %s", path, strerror(errno));
    }
    return fd;
}

static int open_tcp_socket(const struct serve_config *c, char *err, size_t err_len)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(c->listen + 10)) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errf(err, err_len, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0) {
        close(fd);
        return errf(err, err_len, "%s: %s", c->listen, strerror(errno));
    }
    return fd;
}

/* ---- model loading (its own thread, so signals are answered while it runs) ---- */

struct loader {
    struct serve_config cfg;
    struct served_model model;
    struct scheduler *sched;
    int rc;
    char err[512];
    volatile sig_atomic_t done;
    pthread_t thread;
};

static void watchdog_ping(void *ctx)
{
    (void)ctx;
    sd_notify(0, "WATCHDOG=1");
}

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    l->rc = -1;
    if (served_model_open(&l->model, &l->cfg, l->cfg.model_path, l->err, sizeof l->err)) goto out;
    uint64_t wd_usec = 0;
    struct sched_options so = {
        .slots = l->cfg.slots,
        .queue_depth = l->cfg.queue_depth,
        .n_ctx = l->cfg.n_ctx,
        .step_tokens = l->cfg.step_tokens,
        .prefill_chunk = 128,
        .prefix = { .mem_bytes = l->cfg.cache_mem_mb << 20, .dir = l->cfg.cache_dir, .disk_bytes = l->cfg.cache_disk_mb << 20 },
        .heartbeat_ms = 1000,
        .model_id = l->model.model_id,
    };
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec) {
        so.heartbeat = watchdog_ping;
        so.heartbeat_ms = (uint32_t)(wd_usec / 1000 / 2 ? wd_usec / 1000 / 2 : 1);
    }
    if (scheduler_create(&l->sched, l->model.engine, l->model.tg, &so, l->err, sizeof l->err)) goto out;
    l->rc = 0;
out:
    l->done = 1;
    kill(getpid(), SIGUSR1); /* wakes the main thread's sigtimedwait */
    return NULL;
}

/* ---- GPU device loss: the backend is reopened on its own thread (reload.c) ---- */

struct recovery {
    struct model_host *host;
    uint32_t tries;
    char why[200];
    atomic_int running;         /* the thread runs model_host_recover */
    atomic_int gave_up;         /* the last recovery failed every try: stay degraded */
    bool joinable;
    pthread_t thread;
};

static void *recovery_main(void *arg)
{
    struct recovery *r = arg;
    if (model_host_recover(r->host, r->why, r->tries)) atomic_store(&r->gave_up, 1);
    atomic_store(&r->running, 0);
    return NULL;
}

/* Called from the main loop's tick: starts a recovery when a step reported the device
 * lost and none runs (nor gave up on this loss already). */
static void recovery_poll(struct recovery *r, struct scheduler *sched)
{
    if (atomic_load(&r->running)) return;
    if (r->joinable) {
        pthread_join(r->thread, NULL);
        r->joinable = false;
    }
    struct sched_stats ss;
    scheduler_stats(sched, &ss);
    if (!ss.device_lost) {
        atomic_store(&r->gave_up, 0);
        return;
    }
    if (atomic_load(&r->gave_up)) return;
    snprintf(r->why, sizeof r->why, "%s", ss.device_lost_why);
    atomic_store(&r->running, 1);
    if (pthread_create(&r->thread, NULL, recovery_main, r)) {
        atomic_store(&r->running, 0);
        return;
    }
    r->joinable = true;
}

static void audit_event(const char *event, const char *model, const char *slot, const char *detail)
{
    struct audit_record ar = { .event = event, .model = model, .slot = slot, .detail = detail };
    audit_write(&ar);
}

/* SIGHUP: re-read the file and apply it over the flags given at start. Settings that
 * need a restart (socket, model, slots, listen) keep their running values. */
static void reload(struct api *api, int argc, char **argv)
{
    /* What runs now: the start-up config, with the slot a hot reload may have changed. */
    struct serve_config now;
    char model_id[128];
    pthread_mutex_lock(&api->lock);
    now = api->cfg;
    pthread_mutex_unlock(&api->lock);
    api_get_model(api, model_id, sizeof model_id, NULL, 0, NULL, 0);
    const struct serve_config *running = &now;
    struct serve_config c;
    const char *path;
    int print_only;
    char err[512];
    if (build_config(argc, argv, &c, &path, &print_only, err, sizeof err) || config_validate(&c, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: reload refused, keeping the running config: %s\n", err);
        audit_event("reload_failed", model_id, running->slot, err);
        return;
    }
    memcpy(c.model_path, running->model_path, sizeof c.model_path);
    memcpy(c.backend, running->backend, sizeof c.backend);
    memcpy(c.kv_type, running->kv_type, sizeof c.kv_type); /* the sessions' storage: a restart changes it */
    memcpy(c.socket_path, running->socket_path, sizeof c.socket_path);
    memcpy(c.listen, running->listen, sizeof c.listen);
    c.slots = running->slots;
    c.step_tokens = running->step_tokens;
    memcpy(c.update_data_dir, running->update_data_dir, sizeof c.update_data_dir);
    if (running->update_data_dir[0]) memcpy(c.slot, running->slot, sizeof c.slot); /* the slot store's, not the file's */
    c.n_ctx = running->n_ctx;
    c.queue_depth = running->queue_depth;
    c.cache_mem_mb = running->cache_mem_mb;
    memcpy(c.cache_dir, running->cache_dir, sizeof c.cache_dir);
    c.cache_disk_mb = running->cache_disk_mb;
    if (audit_open(c.audit_log, err, sizeof err)) fprintf(stderr, "flashbox serve: reload: %s (audit log unchanged)\n", err);
    api_set_config(api, &c);
    audit_event("reload", model_id, c.slot, path ? path : "(flags only)");
}

int cmd_serve(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    struct serve_config cfg;
    const char *config_path;
    int print_only;
    char err[512];
    if (build_config(argc, argv, &cfg, &config_path, &print_only, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        return 2;
    }
    if (print_only) {
        config_print(&cfg, stdout);
        return 0;
    }
    if (config_validate(&cfg, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        return 2;
    }
    /* Every thread inherits this mask; the main thread takes the signals with sigtimedwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (audit_open(cfg.audit_log, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        return 1;
    }
    /* Socket activation (flashbox.socket): systemd created, bound and owns the socket, so
     * it exists before the model loads and survives restarts; otherwise we make it. */
    int activated = sd_listen_fds(1) >= 1 && sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) > 0;
    int ufd = activated ? SD_LISTEN_FDS_START
                        : open_unix_socket(cfg.socket_path, cfg.socket_group, cfg.socket_mode, "server.socket", err, sizeof err);
    if (ufd < 0) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        return 1;
    }
    if (activated) {
        struct sockaddr_un sa;
        socklen_t sl = sizeof sa;
        if (getsockname(ufd, (struct sockaddr *)&sa, &sl) == 0 && sl > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0])
            snprintf(cfg.socket_path, sizeof cfg.socket_path, "%.*s", (int)(sl - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
    }
    int tfd = -1;
    if (cfg.listen[0] && (tfd = open_tcp_socket(&cfg, err, sizeof err)) < 0) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        close(ufd);
        if (!activated) unlink(cfg.socket_path);
        return 1;
    }
    /* The update admin socket: only with a slot store to update, mode 0600 whatever the
     * API socket's mode, and only root or our own uid get past SO_PEERCRED. */
    int afd = -1;
    if (cfg.update_data_dir[0] && strcmp(cfg.admin_socket, "none")) {
        if (!cfg.admin_socket[0]) config_default_admin_socket(cfg.socket_path, cfg.admin_socket, sizeof cfg.admin_socket);
        if (!strcmp(cfg.admin_socket, cfg.socket_path)) {
            errf(err, sizeof err, "server.admin_socket: %s is the API socket", cfg.admin_socket);
            afd = -1;
        } else {
            afd = open_unix_socket(cfg.admin_socket, "", 0600, "server.admin_socket", err, sizeof err);
        }
        if (afd < 0) {
            fprintf(stderr, "flashbox serve: %s\n", err);
            close(ufd);
            if (tfd >= 0) close(tfd);
            if (!activated) unlink(cfg.socket_path);
            return 1;
        }
    }

    static struct api api; /* outlives every connection thread */
    if (api_start(&api, &cfg, ufd, tfd, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        close(ufd);
        if (tfd >= 0) close(tfd);
        if (afd >= 0) {
            close(afd);
            unlink(cfg.admin_socket);
        }
        if (!activated) unlink(cfg.socket_path);
        return 1;
    }
    struct admin *admin = NULL;
    if (afd >= 0 && admin_start(&admin, &cfg, afd, err, sizeof err)) {
        fprintf(stderr, "flashbox serve: %s\n", err);
        close(afd);
        unlink(cfg.admin_socket);
        api_quiesce(&api);
        api_stop(&api, 2000);
        if (!activated) unlink(cfg.socket_path);
        return 1;
    }
    static struct model_host host; /* the served model once loaded; hot reloads replace it */
    int host_ready = 0;
    sd_notifyf(0, "STATUS=loading %s", cfg.model_path);
    audit_event("start", NULL, cfg.slot, cfg.socket_path);
    fprintf(stderr, "flashbox serve: listening on %s%s%s, loading %s\n", cfg.socket_path, cfg.listen[0] ? " and " : "",
            cfg.listen, cfg.model_path);

    struct update_config uc = { .data_dir = cfg.update_data_dir, .keys_dir = cfg.update_keys_dir,
                                .product = cfg.update_product, .max_boot_attempts = cfg.update_max_boot_attempts,
                                .lock_wait_s = cfg.update_lock_wait_s };
    if (cfg.update_data_dir[0]) {
        static struct update_boot boot;
        if (update_boot_begin(&uc, &boot, err, sizeof err)) {
            fprintf(stderr, "flashbox serve: update boot: %s\n", err);
            audit_event("boot_failed", NULL, cfg.slot, err);
            admin_stop(admin, 0);
            if (admin) unlink(cfg.admin_socket);
            api_quiesce(&api);
            api_stop(&api, 2000);
            if (!activated) unlink(cfg.socket_path);
            audit_close();
            return 1;
        }
        if (boot.fell_back) {
            fprintf(stderr, "flashbox serve: fell back to slot %s: %s\n", boot.slot, boot.reason);
            audit_event("fallback", NULL, boot.slot, boot.reason);
        }
        if (strlen(boot.model_path) >= sizeof cfg.model_path) {
            fprintf(stderr, "flashbox serve: update boot: model path longer than %zu bytes\n", sizeof cfg.model_path - 1);
            return 1;
        }
        memcpy(cfg.model_path, boot.model_path, strlen(boot.model_path) + 1);
        snprintf(cfg.slot, sizeof cfg.slot, "%s", boot.slot);
        api_set_config(&api, &cfg);
    }
    struct loader *ld = calloc(1, sizeof *ld);
    if (!ld) return 1;
    ld->cfg = cfg;
    int exit_code = 0, stopping = 0, loaded = 0;
    static struct recovery rec;
    rec.host = &host;
    rec.tries = cfg.device_recover_tries;
    if (pthread_create(&ld->thread, NULL, loader_main, ld)) {
        fprintf(stderr, "flashbox serve: cannot start the loader thread\n");
        exit_code = 1;
        stopping = 1;
    }
    while (!stopping) {
        struct timespec tick = { .tv_sec = 1 };
        int sig = sigtimedwait(&set, NULL, &tick);
        if (!loaded && ld->done) {
            pthread_join(ld->thread, NULL);
            loaded = 1;
            if (ld->rc) {
                fprintf(stderr, "flashbox serve: loading the model failed: %s\n", ld->err);
                audit_event("load_failed", NULL, cfg.slot, ld->err);
                atomic_store(&api.state, API_FAILED);
                exit_code = 1;
                break;
            }
            /* The log and the audit say so before the first client can see the daemon ready:
             * whoever reads them after /health turned ready finds the lines there. */
            struct sched_stats ss;
            scheduler_stats(ld->sched, &ss);
            if (ss.slots_short[0]) {
                fprintf(stderr, "flashbox serve: %s\n", ss.slots_short);
                audit_event("slots_short", ld->model.model_id, cfg.slot, ss.slots_short);
            }
            audit_event("ready", ld->model.model_id, cfg.slot, NULL);
            fprintf(stderr, "flashbox serve: ready (%s, %u slots)%s%s\n", ld->model.model_id, ss.slots,
                    admin ? "; update admin socket " : "", admin ? cfg.admin_socket : "");
            api_set_ready(&api, ld->sched, ld->model.tg, ld->model.n_vocab, ld->model.model_id);
            model_host_init(&host, &cfg, &api, ld->sched, &ld->model);
            host_ready = 1;
            if (admin) admin_set_host(admin, &host);
            sd_notifyf(0, "READY=1\nSTATUS=serving %s on %s", ld->model.model_id, cfg.socket_path);
            /* The slot loaded and serves: its boot trial (if any) is over. */
            if (cfg.update_data_dir[0] && update_boot_ready(&uc, err, sizeof err)) {
                fprintf(stderr, "flashbox serve: update boot: %s\n", err);
                audit_event("boot_ready_failed", ld->model.model_id, cfg.slot, err);
            }
        }
        if (host_ready) recovery_poll(&rec, ld->sched);
        if (sig == SIGHUP) {
            sd_notify(0, "RELOADING=1");
            reload(&api, argc, argv);
            sd_notify(0, "READY=1");
        } else if (sig == SIGTERM || sig == SIGINT) {
            stopping = 1;
        }
    }

    sd_notify(0, "STOPPING=1");
    struct serve_config live;
    pthread_mutex_lock(&api.lock);
    live = api.cfg;
    pthread_mutex_unlock(&api.lock);
    uint32_t grace_ms = live.shutdown_grace_s * 1000;
    struct timespec t_stop;
    clock_gettime(CLOCK_MONOTONIC, &t_stop);
    /* First the admin socket: an update in progress ends (and its reload runs) before the
     * scheduler is torn down under it; past the grace period it is cancelled. */
    int left_behind = 0;
    if (admin) {
        if (admin_stop(admin, grace_ms)) {
            fprintf(stderr, "flashbox serve: the update operation did not end after it was cancelled; exiting without "
                            "it (the slot store is left as a crash at that point would leave it)\n");
            audit_event("update_abandoned", NULL, cfg.slot, "did not end within shutdown_grace_s after SIGTERM");
            left_behind = 1;
        }
        unlink(cfg.admin_socket);
    }
    if (atomic_load(&api.state) != API_FAILED) atomic_store(&api.state, API_STOPPING);
    api_quiesce(&api);
    if (!activated) unlink(cfg.socket_path); /* an activated socket is systemd's to remove */
    if (!loaded) { /* a signal during loading: the load gets the grace period, then is left behind */
        for (uint32_t waited = 0; !ld->done && waited < grace_ms + ADMIN_CANCEL_BOUND_MS; waited += 50) usleep(50000);
        if (ld->done) {
            pthread_join(ld->thread, NULL);
            loaded = 1;
        } else {
            fprintf(stderr, "flashbox serve: the model load did not end within the grace period; exiting without it\n");
            left_behind = 1;
        }
    }
    if (atomic_load(&rec.running)) { /* a backend reopen in progress gets the grace period too */
        for (uint32_t waited = 0; atomic_load(&rec.running) && waited < grace_ms + ADMIN_CANCEL_BOUND_MS; waited += 50)
            usleep(50000);
        if (atomic_load(&rec.running)) {
            fprintf(stderr, "flashbox serve: the GPU backend reopen did not end within the grace period; exiting without it\n");
            left_behind = 1;
        }
    }
    if (rec.joinable && !atomic_load(&rec.running)) pthread_join(rec.thread, NULL);
    int cancelled = 0;
    if (loaded && ld->sched) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t spent = (uint64_t)(now.tv_sec - t_stop.tv_sec) * 1000u + (uint64_t)(now.tv_nsec - t_stop.tv_nsec) / 1000000;
        cancelled = scheduler_drain(ld->sched, spent < grace_ms ? grace_ms - (uint32_t)spent : 0);
    }
    int stuck = api_stop(&api, 2000) || left_behind;
    if (!stuck) {
        scheduler_destroy(ld->sched);
        if (host_ready) model_host_close(&host); /* the model served last, after any hot reload */
        else served_model_close(&ld->model);
    } else {
        /* A client stopped reading and holds its connection thread; it may still touch
         * the scheduler, so nothing is freed: the process exits now. */
        if (!left_behind)
            fprintf(stderr, "flashbox serve: a stalled connection did not close; exiting without waiting for it\n");
    }
    char detail[64];
    snprintf(detail, sizeof detail, "%d requests cancelled at shutdown", cancelled);
    char last_model[128], last_slot[16];
    api_get_model(&api, last_model, sizeof last_model, last_slot, sizeof last_slot, NULL, 0);
    audit_event("stop", last_model[0] ? last_model : NULL, last_slot, detail);
    audit_close();
    fprintf(stderr, "flashbox serve: stopped (%s)\n", detail);
    /* Work left behind (an update, a load, a reopen, a stalled connection's thread) may
     * still wake up: no exit handlers (library cleanups, leak checks of what it holds) run
     * under it; the process ends here, as a kill would end it. */
    if (stuck) _exit(exit_code);
    free(ld);
    return exit_code;
}
