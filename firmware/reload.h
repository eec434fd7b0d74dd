/* The served model of a running daemon and its hot reload: opening a model with the
 * daemon's engine options (at start, and again when an update switched the active slot),
 * and swapping it in behind the scheduler and the HTTP API without closing the API socket.
 * The update admin socket (admin.c) calls model_host_reload after an install or rollback. */
#ifndef FLASHBOX_FIRMWARE_RELOAD_H
#define FLASHBOX_FIRMWARE_RELOAD_H

#include "firmware/config.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct api;
struct engine;
struct scheduler;
struct textgen;

/* One opened model: the engine and the text side borrowing its tokenizer. */
struct served_model {
    struct engine *engine;
    struct textgen *tg;
    uint32_t n_vocab;
    char model_id[128];         /* general.name, else the file's base name */
    char path[4200];            /* the file it was opened from (a device-loss reopen reads it again) */
};

/* Opens model_path with cfg's backend and expert cache (the options `flashbox serve` uses). */
int served_model_open(struct served_model *m, const struct serve_config *cfg, const char *model_path, char *err,
                      size_t err_len);
void served_model_close(struct served_model *m);

/* What the daemon serves now, and what a reload needs to replace it. */
struct model_host {
    pthread_mutex_t lock;       /* one reload at a time; guards cur and gen */
    struct serve_config cfg;    /* engine options, update store, reload grace */
    struct api *api;
    struct scheduler *sched;
    struct served_model cur;
    uint32_t gen;               /* model generation (api and scheduler model_gen) */
    bool paused;                /* cur is released (model_host_pause) until a resume or reload */
    char paused_path[4200];     /* the file cur was opened from, to open again */
};

struct reload_result {
    bool ok;
    char slot[16];              /* the slot served afterwards */
    char model_id[128];         /* the model served afterwards */
    int cancelled;              /* generations cut off after the grace period */
    char error[768];            /* why the new model is not served ("" when ok) */
};

void model_host_init(struct model_host *h, const struct serve_config *cfg, struct api *api, struct scheduler *sched,
                     struct served_model *first);
/* Opens the slot store's active slot (update.data_dir) and swaps it in: in-flight
 * generations get update.reload_grace_s to finish, requests meanwhile wait in the queue.
 * Success ends the slot's boot trial (update_boot_ready). Failure keeps the old model
 * serving and marks /health degraded with the reason. Returns 0 or -1 (res says why). */
int model_host_reload(struct model_host *h, struct reload_result *res);
/* After the GPU was lost (scheduler stats device_lost): marks /health degraded naming why,
 * then up to tries times opens the served model's file again (weights uploaded, expert
 * cache rebuilt) and swaps it in (in-flight work has already failed). Success clears the
 * degraded mark; after the last failed try it stays, saying why. Returns 0 or -1. */
int model_host_recover(struct model_host *h, const char *why, uint32_t tries);
/* Releases the served model so an update's self-test and evaluation have its memory: the
 * API answers 503 "paused" (Retry-After), running generations get update.reload_grace_s and
 * are then cut off, queued ones wait; the engine is closed. Returns 0 or -1 (nothing
 * changed, err says why). */
int model_host_pause(struct model_host *h, const char *why, char *err, size_t err_len);
/* After a pause the update did not end in a switch (refused, failed, cancelled): opens the
 * model that was served before the pause again and serves it; no-op when not paused. A
 * model_host_reload after a pause resumes with the new active slot instead (and with the
 * old model when the new one does not load). Returns 0, or -1 with /health failed. */
int model_host_resume(struct model_host *h, struct reload_result *res);
/* Closes the served model (the scheduler must be destroyed first). */
void model_host_close(struct model_host *h);

#endif
