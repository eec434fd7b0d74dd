/* `flashbox update verify|install|status|rollback|verify-slot` and `flashbox bundle`:
 * the command line of signed updates. The self-test is wired to the engine here. With
 * --admin-socket, status, install and rollback go to a running daemon's admin socket
 * instead (it installs, then hot-reloads the new slot without closing its API socket). */
#include "firmware/admin_client.h"
#include "firmware/audit.h"
#include "firmware/commands.h"
#include "firmware/config.h"
#include "firmware/eval_gate.h"
#include "firmware/selftest.h"
#include "tools/bundle_cli.h"
#include "update/update.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox update verify BUNDLE    check signature, product and every chunk\n"
            "       flashbox update install BUNDLE   verify, write the inactive slot, self-test, switch\n"
            "       flashbox update status           both slots, versions, epochs, which is active\n"
            "       flashbox update rollback         switch to the other slot (valid, not below the floor)\n"
            "       flashbox update verify-slot a|b  re-hash a slot's payloads against its manifest\n"
            "options:\n"
            "  --data-dir DIR   slots and state (" UPDATE_DEFAULT_DATA_DIR ")\n"
            "  --keys DIR       trusted public keys, *.pem (" UPDATE_DEFAULT_KEYS_DIR ");\n"
            "                   DATA/trusted-keys.pem replaces it once a bundle has rotated the keys\n"
            "  --product ID     this box's product id (" UPDATE_DEFAULT_PRODUCT ")\n"
            "  --backend B      engine backend of the install self-test (ref, the default) and of the\n"
            "                   evaluation (default auto, as flashbox eval): ref or vulkan\n"
            "  --config FILE    the daemon's config file: its [update] settings (data_dir, keys_dir,\n"
            "                   product, eval_*) and [audit] log apply; flags override them\n"
            "  --eval-set FILE  install: the site's evaluation set the new slot must pass before it\n"
            "                   is activated (flashbox eval --help); the run is audited\n"
            "  --eval-min-score X       the lowest accepted score, 0 to 1 (default 0)\n"
            "  --eval-max-regression X  the most the score may fall below the active slot's last\n"
            "                   score on the same set (default: not checked)\n"
            "  --eval-jobs N    engines evaluating at once (default 1)\n"
            "  --admin-socket P status, install and rollback through a running daemon's admin socket\n"
            "                   (server.admin_socket); the daemon then serves the new slot at once\n");
}

/* ---- through a running daemon's admin socket ---- */

static const char *jstr(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static int admin_print_status(json_t *o)
{
    json_t *serving = json_object_get(o, "serving"), *store = json_object_get(o, "store"), *op = json_object_get(o, "operation");
    if (json_is_object(serving)) {
        printf("serving:     %s from slot %s (%s)\n", jstr(serving, "model"), jstr(serving, "slot"), jstr(serving, "status"));
        if (json_object_get(serving, "reason")) printf("degraded:    %s\n", jstr(serving, "reason"));
    } else {
        printf("serving:     nothing yet (loading)\n");
    }
    printf("data dir:    %s\n", jstr(store, "data_dir"));
    printf("keys:        %s\n", jstr(store, "keys"));
    printf("epoch floor: %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(store, "epoch_floor")));
    printf("active:      %s\n", json_is_string(json_object_get(store, "active")) ? jstr(store, "active") : "none");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(store, "slots"), i, s) {
        int active = json_is_true(json_object_get(s, "active"));
        if (json_is_true(json_object_get(s, "valid")))
            printf("slot %s%s  valid   product %s, version %s, epoch %" JSON_INTEGER_FORMAT "\n", jstr(s, "name"),
                   active ? "*" : " ", jstr(s, "product"), jstr(s, "version"), json_integer_value(json_object_get(s, "epoch")));
        else printf("slot %s%s  invalid (%s)\n", jstr(s, "name"), active ? "*" : " ", jstr(s, "why_invalid"));
        const char *prov = jstr(s, "provenance");
        if (*prov) print_provenance("        provenance: ", prov, strlen(prov));
        json_t *ev = json_object_get(s, "evaluation");
        if (json_is_object(ev))
            printf("        evaluation %s: score %.4f, threshold %.4f, %" JSON_INTEGER_FORMAT " cases, set sha256 %s\n",
                   jstr(ev, "verdict"), json_number_value(json_object_get(ev, "score")),
                   json_number_value(json_object_get(ev, "threshold")), json_integer_value(json_object_get(ev, "cases")),
                   jstr(ev, "set_sha256"));
    }
    if (json_is_string(json_object_get(store, "trial")))
        printf("boot trial:  slot %s, %" JSON_INTEGER_FORMAT " attempt(s)\n", jstr(store, "trial"),
               json_integer_value(json_object_get(store, "boot_attempts")));
    if (*jstr(store, "last_fallback")) printf("last fallback: %s\n", jstr(store, "last_fallback"));
    if (json_is_true(json_object_get(op, "running")))
        printf("in progress: %s %s, phase %s (%s %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT ")\n", jstr(op, "kind"),
               jstr(op, "bundle"), jstr(op, "phase"), jstr(op, "what"), json_integer_value(json_object_get(op, "done")),
               json_integer_value(json_object_get(op, "total")));
    return 0;
}

/* Prints an install or rollback result; 0 only when the daemon serves the new slot. */
static int admin_print_result(const char *sub, int status, json_t *o)
{
    json_t *e = json_object_get(o, "error"), *reload = json_object_get(o, "reload");
    if (status != 200) {
        const char *msg = json_is_object(e) ? jstr(e, "message") : "(no message)";
        if (status == 422)
            fprintf(stderr, "flashbox update %s: REFUSED: %s (active slot unchanged, still serving the old model)\n", sub, msg);
        else fprintf(stderr, "flashbox update %s: the daemon answered %d: %s\n", sub, status, msg);
        return 1;
    }
    json_t *b = json_object_get(o, "bundle");
    if (json_is_object(b))
        printf("installed %s version %s (epoch %" JSON_INTEGER_FORMAT "), key %s; self-test passed; now active\n",
               jstr(b, "product"), jstr(b, "version"), json_integer_value(json_object_get(b, "epoch")), jstr(b, "key"));
    else printf("rolled back: the other slot is active\n");
    if (!json_is_true(json_object_get(reload, "ok"))) {
        fprintf(stderr, "flashbox update %s: but the daemon still serves %s from slot %s: %s\n", sub, jstr(reload, "model"),
                jstr(reload, "slot"), jstr(reload, "error"));
        return 1;
    }
    printf("the daemon now serves %s from slot %s", jstr(reload, "model"), jstr(reload, "slot"));
    json_int_t cut = json_integer_value(json_object_get(reload, "cancelled_generations"));
    if (cut) printf(" (%" JSON_INTEGER_FORMAT " generation(s) cut off after the grace period)", cut);
    printf("\n");
    return 0;
}

static int admin_command(const char *sock, const char *sub, const char *arg)
{
    char err[1024];
    char *req_body = NULL;
    const char *method = "POST", *path;
    if (!strcmp(sub, "status")) {
        method = "GET";
        path = "/admin/update/status";
    } else if (!strcmp(sub, "rollback")) {
        path = "/admin/update/rollback";
    } else if (!strcmp(sub, "install")) {
        /* The daemon opens the file itself: give it an absolute path. */
        char abs[PATH_MAX];
        if (!realpath(arg, abs)) {
            fprintf(stderr, "flashbox update install: %s: %s\n", arg, strerror(errno));
            return 1;
        }
        json_t *o = json_pack("{s:s}", "bundle", abs);
        req_body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!req_body) {
            fprintf(stderr, "flashbox update install: out of memory\n");
            return 1;
        }
        path = "/admin/update/install";
    } else {
        fprintf(stderr, "flashbox update %s: not available through the admin socket (status, install, rollback are)\n", sub);
        return 2;
    }
    int status;
    char *resp;
    int rc = admin_client_request(sock, method, path, req_body, &status, &resp, err, sizeof err);
    free(req_body);
    if (rc) {
        fprintf(stderr, "flashbox update %s: %s\n", sub, err);
        return 1;
    }
    json_error_t je;
    json_t *o = json_loads(resp, 0, &je);
    free(resp);
    if (!json_is_object(o)) {
        fprintf(stderr, "flashbox update %s: the daemon answered %d with no JSON object (%s)\n", sub, status, je.text);
        json_decref(o);
        return 1;
    }
    if (!strcmp(sub, "status")) {
        if (status != 200) rc = admin_print_result(sub, status, o);
        else rc = admin_print_status(o);
    } else {
        rc = admin_print_result(sub, status, o);
    }
    json_decref(o);
    return rc;
}

static void print_info(const struct update_bundle_info *in)
{
    char when[64] = "?";
    time_t t = (time_t)in->created;
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    printf("signature: Ed25519, good, key %s (%s)\n", in->key_fingerprint, in->key_origin);
    printf("manifest:  %u bytes, product %s, version %s, epoch %" PRIu64 ", created %s\n", in->manifest_bytes,
           in->product, in->version, in->epoch, when);
    for (uint32_t i = 0; i < in->n_payloads; i++)
        printf("payload:   %s, %" PRIu64 " bytes, %" PRIu64 " chunks of %u bytes, every chunk SHA-256 matched\n",
               in->payloads[i].name, in->payloads[i].size, in->payloads[i].n_chunks, in->payloads[i].chunk_size);
    if (in->n_new_keys) printf("keys:      carries a new trusted key set of %u key(s)\n", in->n_new_keys);
    printf("self-test: %u greedy tokens recorded\n", in->n_expected);
    if (in->provenance[0]) print_provenance("provenance: ", in->provenance, strlen(in->provenance));
}

static int print_status(const struct update_config *cfg)
{
    struct update_status st;
    char err[1024];
    if (update_get_status(cfg, &st, err, sizeof err)) {
        fprintf(stderr, "flashbox update status: %s\n", err);
        return 1;
    }
    printf("data dir:    %s\n", cfg->data_dir);
    printf("keys:        %s\n", st.keys_source);
    printf("epoch floor: %" PRIu64 "\n", st.epoch_floor);
    printf("active:      %s\n", st.active < 0 ? "none" : st.slots[st.active].name);
    for (int i = 0; i < 2; i++) {
        const struct update_slot_status *s = &st.slots[i];
        if (s->valid)
            printf("slot %s%s  valid   product %s, version %s, epoch %" PRIu64 "\n", s->name, s->active ? "*" : " ",
                   s->product, s->version, s->epoch);
        else printf("slot %s%s  invalid (%s)\n", s->name, s->active ? "*" : " ", s->why_invalid);
        if (s->eval.verdict[0])
            printf("        evaluation %s: score %.4f, threshold %.4f, %u cases, set sha256 %s\n", s->eval.verdict,
                   s->eval.score, s->eval.threshold, s->eval.cases, s->eval.set_sha256);
        if (s->valid && s->provenance[0]) print_provenance("        provenance: ", s->provenance, strlen(s->provenance));
    }
    if (st.trial >= 0) printf("boot trial:  slot %s, %u attempt(s)\n", st.slots[st.trial].name, st.boot_attempts);
    if (st.last_fallback[0]) printf("last fallback: %s\n", st.last_fallback);
    return 0;
}

int cmd_update(int argc, char **argv)
{
    struct update_config cfg;
    update_config_default(&cfg);
    struct selftest_opts so = { ENGINE_BACKEND_REF };
    const char *sub = NULL, *arg = NULL, *admin_sock = NULL;
    /* --config first, so that flags override it wherever they stand. */
    static struct serve_config sc;
    config_default(&sc);
    struct eval_policy policy = { .min_score = 0, .max_regression = -1, .jobs = 1 };
    bool eval_flags = false, backend_given = false;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--config")) continue;
        char err[1024];
        if (config_load_file(&sc, argv[i + 1], err, sizeof err)) {
            fprintf(stderr, "flashbox update: %s\n", err);
            return 2;
        }
        if (sc.update_data_dir[0]) cfg.data_dir = sc.update_data_dir;
        cfg.keys_dir = sc.update_keys_dir;
        cfg.product = sc.update_product;
        cfg.max_boot_attempts = sc.update_max_boot_attempts;
        policy.set_path = sc.update_eval_set;
        policy.min_score = sc.update_eval_min_score;
        policy.max_regression = sc.update_eval_max_regression;
        policy.jobs = sc.update_eval_jobs;
        if (audit_open(sc.audit_log, err, sizeof err)) {
            fprintf(stderr, "flashbox update: %s\n", err);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--data-dir") && i + 1 < argc) cfg.data_dir = argv[++i];
        else if (!strcmp(a, "--keys") && i + 1 < argc) cfg.keys_dir = argv[++i];
        else if (!strcmp(a, "--product") && i + 1 < argc) cfg.product = argv[++i];
        else if (!strcmp(a, "--admin-socket") && i + 1 < argc) admin_sock = argv[++i];
        else if (!strcmp(a, "--config") && i + 1 < argc) i++; /* read above */
        else if (!strcmp(a, "--eval-set") && i + 1 < argc) {
            policy.set_path = argv[++i];
            eval_flags = true;
        } else if ((!strcmp(a, "--eval-min-score") || !strcmp(a, "--eval-max-regression")) && i + 1 < argc) {
            double *v = !strcmp(a, "--eval-min-score") ? &policy.min_score : &policy.max_regression;
            if (eval_policy_parse_unit(argv[++i], v)) {
                fprintf(stderr, "flashbox update: %s '%s', expected a number from 0 to 1\n", a, argv[i]);
                return 2;
            }
            eval_flags = true;
        } else if (!strcmp(a, "--eval-jobs") && i + 1 < argc) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end || end == argv[i] || v < 1 || v > 64) {
                fprintf(stderr, "flashbox update: --eval-jobs '%s', expected 1 to 64\n", argv[i]);
                return 2;
            }
            policy.jobs = (uint32_t)v;
            eval_flags = true;
        }
        else if (!strcmp(a, "--backend") && i + 1 < argc) {
            backend_given = true;
            if (engine_backend_parse(argv[++i], &so.backend)) {
                fprintf(stderr, "flashbox update: unknown backend '%s'\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "flashbox update: unknown option '%s'\n", a);
            return 2;
        } else if (!sub) sub = a;
        else if (!arg) arg = a;
        else {
            fprintf(stderr, "flashbox update: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!sub) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    struct update_bundle_info info;
    /* The site records its set on the backend the box serves with (flashbox eval: auto),
     * and greedy answers are bitwise the same only on the same backend. */
    policy.backend = backend_given ? so.backend : ENGINE_BACKEND_AUTO;
    bool has_policy = policy.set_path && policy.set_path[0];
    struct update_hooks hooks = { .progress = update_progress_tty, .selftest = selftest_run, .user = &so,
                                  .evaluate = has_policy ? eval_gate_evaluate : NULL, .eval_user = &policy };
    if (eval_flags && (admin_sock || strcmp(sub, "install"))) {
        fprintf(stderr, "flashbox update %s: the --eval-* options are for a local install; a daemon applies its "
                        "config's [update] eval_* policy\n", sub);
        return 2;
    }
    if (eval_flags && !has_policy) {
        fprintf(stderr, "flashbox update install: --eval-min-score and the like need --eval-set FILE\n");
        return 2;
    }
    int needs_arg = !strcmp(sub, "verify") || !strcmp(sub, "install") || !strcmp(sub, "verify-slot");
    if (needs_arg != (arg != NULL)) {
        fprintf(stderr, "flashbox update %s: %s\n", sub, needs_arg ? "takes one argument" : "takes no argument");
        return 2;
    }
    if (admin_sock) return admin_command(admin_sock, sub, arg);
    if (!strcmp(sub, "verify")) {
        if (update_verify_bundle(&cfg, arg, &hooks, &info, err, sizeof err)) {
            fprintf(stderr, "flashbox update verify: %s: REFUSED: %s\n", arg, err);
            return 1;
        }
        print_info(&info);
        printf("%s: OK\n", arg);
        return 0;
    }
    if (!strcmp(sub, "install")) {
        if (update_install(&cfg, arg, &hooks, &info, err, sizeof err)) {
            fprintf(stderr, "flashbox update install: %s: REFUSED: %s (active slot unchanged)\n", arg, err);
            return 1;
        }
        print_info(&info);
        printf("installed %s version %s (epoch %" PRIu64 "); self-test passed;%s now active\n", info.product,
               info.version, info.epoch, has_policy ? " site evaluation passed;" : "");
        return 0;
    }
    if (!strcmp(sub, "status")) return print_status(&cfg);
    if (!strcmp(sub, "rollback")) {
        if (update_rollback(&cfg, err, sizeof err)) {
            fprintf(stderr, "flashbox update rollback: %s\n", err);
            return 1;
        }
        return print_status(&cfg);
    }
    if (!strcmp(sub, "verify-slot")) {
        int slot = !strcmp(arg, "a") ? 0 : !strcmp(arg, "b") ? 1 : -1;
        if (slot < 0) {
            fprintf(stderr, "flashbox update verify-slot: slot '%s', expected a or b\n", arg);
            return 2;
        }
        if (update_verify_slot(&cfg, slot, &hooks, err, sizeof err)) {
            fprintf(stderr, "flashbox update verify-slot: %s\n", err);
            return 1;
        }
        printf("slot %s: signature and every chunk OK\n", arg);
        return 0;
    }
    fprintf(stderr, "flashbox update: unknown subcommand '%s'\n", sub);
    usage(stderr);
    return 2;
}

int cmd_bundle(int argc, char **argv)
{
    return tool_bundle_run(argc, argv, selftest_greedy, NULL);
}
