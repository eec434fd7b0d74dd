/* The daemon's configuration: every setting with its default, the config-file parser
 * (INI sections of `key = value`, strict: unknown sections or keys are errors) and the
 * printer behind `flashbox serve --print-config`. Command-line flags override the file. */
#ifndef FLASHBOX_FIRMWARE_CONFIG_H
#define FLASHBOX_FIRMWARE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { CONFIG_MAX_IDS = 32, CONFIG_PATH_MAX = 512 };

struct serve_config {
    /* [model] */
    char model_path[CONFIG_PATH_MAX];
    char backend[16];             /* "ref" or "vulkan" */
    char kv_type[8];              /* "f32", "f16" or "fp8": storage of compressed entries and indexer keys */
    char slot[16];                /* active update slot label reported in health/audit */
    uint32_t n_ctx;               /* positions per session; 0 = the largest the memory plan fits */
    uint64_t expert_cache_mb;     /* 0 = every expert resident; else page experts through this cache */
    bool expert_verify;           /* paged experts checked against checksums taken at load */
    uint64_t cache_mem_mb;        /* prefix reuse: saved session states held in memory; 0 = off */
    char cache_dir[CONFIG_PATH_MAX]; /* and in files there ("" = memory only) */
    uint64_t cache_disk_mb;       /* bytes of those files */
    /* [server] */
    char socket_path[CONFIG_PATH_MAX];
    char socket_group[64];        /* group owning the socket; empty = daemon's group */
    uint32_t socket_mode;         /* octal permission bits of the socket file */
    char listen[64];              /* "127.0.0.1:PORT" for loopback TCP; empty = none */
    char admin_socket[CONFIG_PATH_MAX]; /* update admin socket (with update.data_dir); empty = default, "none" = off */
    uint32_t max_connections;
    uint32_t connection_timeout_s; /* idle / slow-header limit per connection */
    uint32_t slots;               /* sequences decoded together */
    uint32_t step_tokens;         /* tokens per scheduler step: every decode token, then prompt chunks */
    uint32_t queue_depth;         /* requests waiting for a slot before 429 */
    uint32_t request_deadline_s;  /* wall time per generation request */
    uint32_t shutdown_grace_s;    /* SIGTERM: time in-flight work gets to finish */
    uint32_t device_recover_tries; /* GPU lost: reopen attempts before staying degraded */
    uint32_t sse_ping_s;          /* SSE comment keep-alive while nothing is produced */
    /* [limits] */
    uint64_t max_body_bytes;
    uint32_t max_prompt_tokens;   /* 0 = session context - 1 */
    uint32_t max_tokens;          /* cap on a request's max_tokens */
    uint32_t default_max_tokens;  /* when the request gives none */
    uint32_t max_stop;            /* stop strings per request */
    uint32_t max_stop_len;        /* bytes per stop string */
    uint32_t max_messages;
    uint32_t max_requests_per_uid; /* generation requests in flight per peer uid; 0 = no cap */
    /* [access] */
    uint32_t n_allow_uids, n_allow_gids;
    uint32_t allow_uids[CONFIG_MAX_IDS];
    uint32_t allow_gids[CONFIG_MAX_IDS];
    /* [update] */
    char update_data_dir[CONFIG_PATH_MAX]; /* slot store; empty = serve model.path as given */
    char update_keys_dir[CONFIG_PATH_MAX];
    char update_product[64];
    uint32_t update_max_boot_attempts;
    uint32_t update_lock_wait_s; /* boot: bound on waiting for the store's lock */
    uint32_t update_reload_grace_s; /* hot reload: time in-flight requests get to finish */
    uint32_t update_operation_timeout_s; /* admin install/rollback deadline */
    char update_eval_set[CONFIG_PATH_MAX]; /* the site's evaluation set; empty = none */
    double update_eval_min_score;   /* 0..1 */
    double update_eval_max_regression; /* 0..1, or -1 = off */
    uint32_t update_eval_jobs;
    char update_pause_serving[8];   /* auto, always or never (admin installs; firmware/admin.c) */
    /* [audit] */
    char audit_log[CONFIG_PATH_MAX]; /* "stderr" or a file path (appended) */
    bool log_prompts;
};

void config_default(struct serve_config *c);
/* The default socket path: /run/flashbox/api.sock as root, else $XDG_RUNTIME_DIR/flashbox/
 * api.sock, else ./run/api.sock. */
void config_default_socket(char *out, size_t out_len);
/* The admin socket's path when server.admin_socket is empty: /run/flashbox/admin.sock as
 * root, else admin.sock next to the API socket. */
void config_default_admin_socket(const char *api_socket, char *out, size_t out_len);
/* Applies a config file's text over c. On error c may be partly updated; callers parse into
 * a copy and keep the old one (SIGHUP). The message names the line and key. */
int config_parse(struct serve_config *c, const char *text, size_t len, const char *name, char *err, size_t err_len);
int config_load_file(struct serve_config *c, const char *path, char *err, size_t err_len);
/* Sets one setting by "section.key" (the flag path) or "key". */
int config_set(struct serve_config *c, const char *section, const char *key, const char *value, char *err, size_t err_len);
/* Writes the whole config as a parseable, commented file. */
void config_print(const struct serve_config *c, FILE *out);
/* Cross-field checks (slots >= 1, default_max_tokens <= max_tokens, listen is loopback). */
int config_validate(const struct serve_config *c, char *err, size_t err_len);

#endif
