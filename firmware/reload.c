/* The served model and its hot reload (see reload.h). Order of a reload, chosen so that a
 * failure at any step leaves the old model serving untouched:
 *   1. open the new model and its tokenizer while the old one serves (both in memory)
 *   2. scheduler_swap_engine: new sessions, drain or cut off running work, swap, resume
 *   3. api_swap_model: tokenizing requests switch over (after the ones in progress)
 *   4. close the old model; update_boot_ready ends the new slot's trial */
#include "firmware/reload.h"

#include "engine/engine.h"
#include "common/errmsg.h"
#include "firmware/audit.h"
#include "firmware/http_api.h"
#include "firmware/scheduler.h"
#include "firmware/textgen.h"
#include "update/update.h"
#include "firmware/backend_pick.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int served_model_open(struct served_model *m, const struct serve_config *cfg, const char *model_path, char *err,
                      size_t err_len)
{
    memset(m, 0, sizeof *m);
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = model_path;
    eo.expert_cache_mb = cfg->expert_cache_mb;
    eo.expert_verify = cfg->expert_verify;
    if (engine_backend_parse(cfg->backend, &eo.backend) != 0)
        return errf(err, err_len, "model.backend: '%s', expected auto, ref or vulkan", cfg->backend);
    if (engine_kv_parse(cfg->kv_type, &eo.kv) != 0)
        return errf(err, err_len, "model.kv_type: '%s', expected f32, f16 or fp8", cfg->kv_type);
    backend_resolve(&eo);
    if (engine_open(&m->engine, &eo, err, err_len)) return -1;
    snprintf(m->path, sizeof m->path, "%s", model_path);
    if (textgen_open(&m->tg, m->engine, err, err_len)) {
        engine_close(m->engine);
        m->engine = NULL;
        return -1;
    }
    struct engine_info info;
    engine_get_info(m->engine, &info);
    m->n_vocab = info.n_vocab;
    if (info.model_name && *info.model_name) snprintf(m->model_id, sizeof m->model_id, "%.127s", info.model_name);
    else {
        const char *base = strrchr(model_path, '/');
        snprintf(m->model_id, sizeof m->model_id, "%.127s", base ? base + 1 : model_path);
    }
    return 0;
}

void served_model_close(struct served_model *m)
{
    textgen_close(m->tg);
    engine_close(m->engine);
    memset(m, 0, sizeof *m);
}

void model_host_init(struct model_host *h, const struct serve_config *cfg, struct api *api, struct scheduler *sched,
                     struct served_model *first)
{
    pthread_mutex_init(&h->lock, NULL);
    h->cfg = *cfg;
    h->api = api;
    h->sched = sched;
    h->cur = *first;
    h->gen = 0;
}

static void audit_reload(const char *event, const char *model, const char *slot, const char *detail)
{
    struct audit_record ar = { .event = event, .model = model, .slot = slot, .detail = detail };
    audit_write(&ar);
}

/* The active slot's name and model file, read from the store now. */
static int active_model(const struct update_config *uc, char *slot, size_t slot_len, char *path, size_t path_len,
                        char *err, size_t err_len)
{
    static struct update_status st; /* 10 KiB; reloads are serialized by the host lock */
    if (update_get_status(uc, &st, err, err_len)) return -1;
    if (st.active < 0) return errf(err, err_len, "%s: no active slot", uc->data_dir);
    const struct update_slot_status *s = &st.slots[st.active];
    snprintf(slot, slot_len, "%s", s->name);
    if ((size_t)snprintf(path, path_len, "%s/%s", s->path, UPDATE_MODEL_PAYLOAD) >= path_len)
        return errf(err, err_len, "%s: path too long", s->path);
    return 0;
}

int model_host_pause(struct model_host *h, const char *why, char *err, size_t err_len)
{
    pthread_mutex_lock(&h->lock);
    if (h->paused) {
        pthread_mutex_unlock(&h->lock);
        return 0;
    }
    char slot[16];
    api_get_model(h->api, NULL, 0, slot, sizeof slot, NULL, 0);
    atomic_store(&h->api->state, API_PAUSED); /* new requests: 503 from here */
    int cut = 0;
    uint32_t gen = h->gen + 1;
    if (scheduler_swap_engine(h->sched, NULL, NULL, gen, h->cur.model_id, h->cfg.update_reload_grace_s * 1000, &cut, err,
                              err_len)) {
        atomic_store(&h->api->state, API_READY);
        pthread_mutex_unlock(&h->lock);
        return -1;
    }
    api_swap_model(h->api, NULL, h->cur.n_vocab, gen, h->cur.model_id, slot); /* waits for tokenizers */
    snprintf(h->paused_path, sizeof h->paused_path, "%s", h->cur.path);
    char model_id[128];
    snprintf(model_id, sizeof model_id, "%s", h->cur.model_id);
    served_model_close(&h->cur);
    snprintf(h->cur.model_id, sizeof h->cur.model_id, "%s", model_id);
    h->gen = gen;
    h->paused = true;
    char detail[300];
    snprintf(detail, sizeof detail, "serving paused: %.200s (%d generation(s) cut off)", why, cut);
    audit_reload("serving_paused", model_id, slot, detail);
    fprintf(stderr, "flashbox serve: %s\n", detail);
    pthread_mutex_unlock(&h->lock);
    return 0;
}

/* With h->lock held and h->paused: serves h->paused_path again. */
static int resume_locked(struct model_host *h, char *err, size_t err_len)
{
    char slot[16];
    api_get_model(h->api, NULL, 0, slot, sizeof slot, NULL, 0);
    struct served_model m;
    if (served_model_open(&m, &h->cfg, h->paused_path, err, err_len)) {
        atomic_store(&h->api->state, API_FAILED);
        audit_reload("resume_failed", h->cur.model_id, slot, err);
        fprintf(stderr, "flashbox serve: the model served before the pause did not load again: %s\n", err);
        return -1;
    }
    uint32_t gen = h->gen + 1;
    int cut = 0;
    if (scheduler_swap_engine(h->sched, m.engine, m.tg, gen, m.model_id, 0, &cut, err, err_len)) {
        served_model_close(&m);
        atomic_store(&h->api->state, API_FAILED);
        return -1;
    }
    api_swap_model(h->api, m.tg, m.n_vocab, gen, m.model_id, slot);
    h->cur = m;
    h->gen = gen;
    h->paused = false;
    atomic_store(&h->api->state, API_READY);
    audit_reload("serving_resumed", h->cur.model_id, slot, NULL);
    fprintf(stderr, "flashbox serve: serving %s from slot %s again\n", h->cur.model_id, slot);
    return 0;
}

int model_host_resume(struct model_host *h, struct reload_result *res)
{
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&h->lock);
    int rc = 0;
    if (h->paused) rc = resume_locked(h, res->error, sizeof res->error);
    res->ok = rc == 0;
    api_get_model(h->api, res->model_id, sizeof res->model_id, res->slot, sizeof res->slot, NULL, 0);
    pthread_mutex_unlock(&h->lock);
    return rc;
}

int model_host_reload(struct model_host *h, struct reload_result *res)
{
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&h->lock);
    struct update_config uc = { .data_dir = h->cfg.update_data_dir, .keys_dir = h->cfg.update_keys_dir,
                                .product = h->cfg.update_product, .max_boot_attempts = h->cfg.update_max_boot_attempts,
                                .lock_wait_s = h->cfg.update_lock_wait_s };
    char old_slot[16], path[4200], slot[16] = "", err[600];
    api_get_model(h->api, NULL, 0, old_slot, sizeof old_slot, NULL, 0);
    struct served_model next;
    int rc = active_model(&uc, slot, sizeof slot, path, sizeof path, err, sizeof err);
    if (!rc && (rc = served_model_open(&next, &h->cfg, path, err, sizeof err)) != 0)
        errf_prefix(err, sizeof err, "slot %s: loading %s", slot, path);
    if (!rc) {
        uint32_t gen = h->gen + 1;
        rc = scheduler_swap_engine(h->sched, next.engine, next.tg, gen, next.model_id, h->cfg.update_reload_grace_s * 1000,
                                   &res->cancelled, err, sizeof err);
        if (rc) {
            served_model_close(&next);
            errf_prefix(err, sizeof err, "slot %s", slot);
        } else {
            api_swap_model(h->api, next.tg, next.n_vocab, gen, next.model_id, slot);
            served_model_close(&h->cur); /* nothing uses it any more: scheduler and API moved on */
            h->cur = next;
            h->gen = gen;
            if (h->paused) { /* the update that paused serving ends here */
                h->paused = false;
                atomic_store(&h->api->state, API_READY);
            }
        }
    }
    if (rc && h->paused) { /* nothing serves: the model from before the pause, degraded */
        char again[300];
        size_t l = strlen(err);
        if (resume_locked(h, again, sizeof again))
            snprintf(err + l, sizeof err - l, "; the model served before the update did not load again either: %.200s", again);
    }
    if (rc) {
        /* The old model keeps serving; /health says so until a reload succeeds. */
        snprintf(res->error, sizeof res->error, "%s", err);
        char why[256];
        snprintf(why, sizeof why, "active slot %s did not load, still serving slot %s: %.150s", slot[0] ? slot : "?",
                 old_slot, err);
        api_set_degraded(h->api, why);
        audit_reload("reload_failed", h->cur.model_id, old_slot, err);
        fprintf(stderr, "flashbox serve: hot reload failed, still serving slot %s: %s\n", old_slot, err);
    } else {
        res->ok = true;
        audit_reload("reload", h->cur.model_id, slot, res->cancelled ? "generations cut off by the grace period" : NULL);
        fprintf(stderr, "flashbox serve: now serving %s from slot %s (%d generation(s) cut off)\n", h->cur.model_id, slot,
                res->cancelled);
        /* The new slot loaded and serves: its boot trial is over. */
        if (update_boot_ready(&uc, err, sizeof err)) {
            fprintf(stderr, "flashbox serve: update boot: %s\n", err);
            audit_reload("boot_ready_failed", h->cur.model_id, slot, err);
        }
    }
    api_get_model(h->api, res->model_id, sizeof res->model_id, res->slot, sizeof res->slot, NULL, 0);
    pthread_mutex_unlock(&h->lock);
    return rc ? -1 : 0;
}

int model_host_recover(struct model_host *h, const char *why, uint32_t tries)
{
    pthread_mutex_lock(&h->lock);
    char slot[16], msg[256], err[600] = "";
    api_get_model(h->api, NULL, 0, slot, sizeof slot, NULL, 0);
    snprintf(msg, sizeof msg, "%.180s; reopening the backend", why);
    api_set_degraded(h->api, msg);
    audit_reload("device_lost", h->cur.model_id, slot, why);
    fprintf(stderr, "flashbox serve: %s\n", msg);
    int rc = -1;
    for (uint32_t t = 1; t <= tries && rc; t++) {
        if (t > 1) sleep(1); /* a driver reset takes a moment */
        struct served_model next;
        if (served_model_open(&next, &h->cfg, h->cur.path, err, sizeof err)) continue;
        int cut = 0;
        if (scheduler_swap_engine(h->sched, next.engine, next.tg, h->gen + 1, next.model_id, 0, &cut, err, sizeof err)) {
            served_model_close(&next);
            continue;
        }
        api_swap_model(h->api, next.tg, next.n_vocab, h->gen + 1, next.model_id, slot);
        served_model_close(&h->cur); /* the lost engine: its teardown does not wait on the device */
        h->cur = next;
        h->gen++;
        rc = 0;
        api_set_degraded(h->api, "");
        char detail[64];
        snprintf(detail, sizeof detail, "backend reopened (try %u of %u)", t, tries);
        audit_reload("device_recovered", h->cur.model_id, slot, detail);
        fprintf(stderr, "flashbox serve: GPU backend reopened, serving %s again (try %u of %u)\n", h->cur.model_id, t, tries);
    }
    if (rc) {
        snprintf(msg, sizeof msg, "%.100s; the backend did not reopen in %u tries: %.100s", why, tries, err);
        api_set_degraded(h->api, msg);
        audit_reload("device_recover_failed", h->cur.model_id, slot, msg);
        fprintf(stderr, "flashbox serve: %s\n", msg);
    }
    pthread_mutex_unlock(&h->lock);
    return rc;
}

void model_host_close(struct model_host *h)
{
    served_model_close(&h->cur);
    pthread_mutex_destroy(&h->lock);
}
