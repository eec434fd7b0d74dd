/* `flashbox eval`: runs a site's evaluation set (eval_set.h) on a model file and prints a
 * line per case, the score per scorer and overall, with progress on stderr, and writes a
 * JSON report; `flashbox eval --record` fills a set's expected answers from a trusted
 * model. The same runner gates `flashbox update install` (firmware/eval_gate.c). */
#include "firmware/commands.h"
#include "firmware/eval_run.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox eval -m MODEL.gguf --set FILE [options]\n"
            "       flashbox eval --record -m MODEL.gguf --set FILE --out FILE\n"
            "  --set FILE        the evaluation set: one JSON case per line\n"
            "  --backend B       auto (default: vulkan on a GPU, else ref), ref or vulkan\n"
            "  --jobs N          engines evaluating at once (default 1)\n"
            "  --report FILE     write the JSON report there\n"
            "  --min-score X     exit with status 1 when the score is below X (0 to 1)\n"
            "  --record          run the set on a trusted model and write it, expected answers\n"
            "                    filled (exact, contains, choice; reference_logprob's measure),\n"
            "                    to --out\n"
            "Answers are greedy and seeded: the same model, set and backend give the same scores.\n");
}

static void progress(void *user, uint32_t done, uint32_t total)
{
    (void)user;
    if (isatty(STDERR_FILENO)) fprintf(stderr, "\reval: %u/%u cases", done, total);
    else if (done == total || done % 50 == 0) fprintf(stderr, "eval: %u/%u cases\n", done, total);
    if (done == total && isatty(STDERR_FILENO)) fprintf(stderr, "\n");
}

static int write_report(const char *path, json_t *rep)
{
    if (json_dump_file(rep, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
        fprintf(stderr, "flashbox eval: cannot write the report %s\n", path);
        return -1;
    }
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *set_path = NULL, *report = NULL, *out = NULL;
    struct eval_run_opts o = { .backend = ENGINE_BACKEND_AUTO, .jobs = 1, .progress = progress };
    bool record = false;
    double min_score = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") && has) model = argv[++i];
        else if (!strcmp(a, "--set") && has) set_path = argv[++i];
        else if (!strcmp(a, "--report") && has) report = argv[++i];
        else if (!strcmp(a, "--out") && has) out = argv[++i];
        else if (!strcmp(a, "--record")) record = true;
        else if (!strcmp(a, "--backend") && has) {
            if (engine_backend_parse(argv[++i], &o.backend)) {
                fprintf(stderr, "flashbox eval: unknown backend '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--jobs") && has) {
            char *end;
            errno = 0;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end || end == argv[i] || errno || v < 1 || v > 64) {
                fprintf(stderr, "flashbox eval: --jobs '%s', expected 1 to 64\n", argv[i]);
                return 2;
            }
            o.jobs = (uint32_t)v;
        } else if (!strcmp(a, "--min-score") && has) {
            char *end;
            min_score = strtod(argv[++i], &end);
            if (*end || end == argv[i] || !(min_score >= 0 && min_score <= 1)) {
                fprintf(stderr, "flashbox eval: --min-score '%s', expected a number from 0 to 1\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "flashbox eval: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || !set_path || (record && !out) || (!record && out)) {
        fprintf(stderr, "flashbox eval: %s\n", !model || !set_path ? "-m MODEL and --set FILE are required"
                                               : record ? "--record needs --out FILE"
                                                        : "--out is for --record (the report goes to --report)");
        usage(stderr);
        return 2;
    }
    char err[1024];
    struct eval_set set;
    if (eval_set_load(set_path, record, &set, err, sizeof err)) {
        fprintf(stderr, "flashbox eval: %s\n", err);
        return 1;
    }
    o.model_path = model;
    struct eval_result r;
    if (eval_run(&set, &o, &r, err, sizeof err)) {
        fprintf(stderr, "flashbox eval: %s\n", err);
        eval_set_free(&set);
        return 1;
    }
    int rc = 0;
    uint32_t passed = 0;
    for (uint32_t i = 0; i < set.n; i++) {
        const struct eval_case *c = &set.cases[i];
        const struct eval_case_result *cr = &r.cases[i];
        passed += (uint32_t)cr->score;
        printf("%s %s (line %u, %s)%s%s\n", cr->score ? "PASS" : "FAIL", c->id, c->line, eval_scorer_name(c->scorer),
               cr->why[0] ? ": " : "", cr->why);
        if (record && cr->error) rc = 1;
    }
    for (int k = 0; k < EVAL_SCORER_COUNT; k++)
        if (set.per_scorer[k])
            printf("scorer %-17s %.4f (%u cases)\n", eval_scorer_name((enum eval_scorer)k), r.scorer_score[k], set.per_scorer[k]);
    printf("score %.4f (%u of %u cases passed) in %.1f s; set %s sha256 %s\n", r.score, passed, set.n, r.seconds,
           set_path, set.sha256);
    if (report) {
        json_t *rep = eval_report_json(model, set_path, &set, &r);
        if (!rep || write_report(report, rep)) rc = 1;
        json_decref(rep);
    }
    if (record) {
        if (rc) fprintf(stderr, "flashbox eval --record: some cases could not run (above); nothing written\n");
        else if (eval_record_write(out, &set, &r, err, sizeof err)) {
            fprintf(stderr, "flashbox eval --record: %s\n", err);
            rc = 1;
        } else printf("recorded %u cases from %s into %s\n", set.n, model, out);
    }
    if (!record && min_score >= 0 && r.score < min_score) {
        fprintf(stderr, "flashbox eval: score %.4f is below --min-score %.4f\n", r.score, min_score);
        rc = 1;
    }
    eval_result_free(&r);
    eval_set_free(&set);
    return rc;
}
