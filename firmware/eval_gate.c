/* The update gate on the site's evaluation set (see eval_gate.h). */
#include "firmware/eval_gate.h"

#include "common/errmsg.h"
#include "firmware/audit.h"
#include "firmware/eval_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int eval_policy_parse_unit(const char *text, double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= 0 && v <= 1)) return -1;
    *out = v;
    return 0;
}

struct gate_progress {
    const struct update_eval *e;
    unsigned delay_us;            /* tests: FLASHBOX_EVAL_TEST_DELAY_US after each case */
    const char *what;             /* the progress line's subject */
};

static void on_case(void *user, uint32_t done, uint32_t total)
{
    const struct gate_progress *gp = user;
    if (gp->e->progress) gp->e->progress(gp->e->progress_user, UPDATE_PHASE_EVALUATE, gp->what, done, total);
    if (gp->delay_us && done) usleep(gp->delay_us); /* widens the window that kill tests aim at */
}

static void audit_run(const struct eval_policy *p, const struct update_eval *e, const struct update_eval_result *r,
                      bool passed, const char *why)
{
    char detail[1200];
    if (r->ran)
        snprintf(detail, sizeof detail, "slot %s: score %.4f over %u cases, threshold %.4f: %s; set %s sha256 %s%s%.900s",
                 e->slot, r->score, r->n_cases, r->threshold, passed ? "passed" : "refused", p->set_path, r->set_sha256,
                 passed ? "" : "; ", passed ? "" : why);
    else snprintf(detail, sizeof detail, "slot %s: evaluation could not run: %.900s", e->slot, why);
    struct audit_record ar = { .event = "update_evaluate", .model = e->model_path, .slot = e->slot,
                               .status = passed ? 0 : 422, .detail = detail };
    audit_write(&ar);
}

/* The regression baseline: the active slot on the same set bytes, run once and recorded
 * (install.c writes it into the active slot's record), so the next install compares with it
 * without running it again. 0 with r->active_ran when it ran; 0 without it when it could not
 * (the install goes on under eval_min_score alone, and the audit says why); -1 only when
 * the install was cancelled meanwhile. */
static int evaluate_baseline(const struct eval_policy *p, const struct update_eval *e, const struct eval_set *set,
                             struct eval_run_opts o, struct gate_progress *gp, struct update_eval_result *r, char *err,
                             size_t err_len)
{
    char why[512], detail[1200];
    struct eval_result base;
    o.model_path = e->active_model_path;
    gp->what = "the active slot (regression baseline)";
    on_case(gp, 0, set->n);
    if (eval_run(set, &o, &base, why, sizeof why)) {
        if (p->cancel && *p->cancel) return errf(err, err_len, "%s", why);
        snprintf(detail, sizeof detail, "slot %s (active): the regression baseline could not run, only eval_min_score "
                 "applies: %.900s", e->active_slot, why);
    } else {
        r->active_ran = true;
        r->active_score = base.score;
        r->active_threshold = p->min_score;
        r->active_passed = base.score + 1e-9 >= p->min_score;
        snprintf(detail, sizeof detail, "slot %s (active, regression baseline): score %.4f over %u cases, threshold "
                 "%.4f: %s; set %s sha256 %s", e->active_slot, base.score, set->n, p->min_score,
                 r->active_passed ? "passed" : "refused", p->set_path, set->sha256);
        eval_result_free(&base);
    }
    struct audit_record ar = { .event = "update_evaluate", .model = e->active_model_path, .slot = e->active_slot,
                               .status = r->active_ran && r->active_passed ? 0 : 422, .detail = detail };
    audit_write(&ar);
    gp->what = "site evaluation set";
    return 0;
}

int eval_gate_evaluate(void *user, const struct update_eval *e, struct update_eval_result *r, char *err,
                       size_t err_len)
{
    const struct eval_policy *p = user;
    memset(r, 0, sizeof *r);
    if (!p || !p->set_path || !p->set_path[0]) return 0;
    struct eval_set set;
    if (eval_set_load(p->set_path, false, &set, err, err_len)) {
        audit_run(p, e, r, false, err);
        return errf_prefix(err, err_len, "evaluation set");
    }
    const char *delay = getenv("FLASHBOX_EVAL_TEST_DELAY_US");
    struct gate_progress gp = { e, delay ? (unsigned)strtoul(delay, NULL, 10) : 0, "site evaluation set" };
    struct eval_run_opts o = { .model_path = e->model_path, .backend = p->backend, .jobs = p->jobs ? p->jobs : 1,
                               .progress = on_case, .user = &gp, .cancel = p->cancel };
    /* The active slot's score on these very bytes: recorded, or measured now (once). */
    bool have_active = e->has_active && !strcmp(e->active_set_sha256, set.sha256);
    double active_score = e->active_score;
    if (p->max_regression >= 0 && !have_active && e->active_model_path) {
        if (evaluate_baseline(p, e, &set, o, &gp, r, err, err_len)) {
            eval_set_free(&set);
            return -1;
        }
        have_active = r->active_ran;
        active_score = r->active_score;
    }
    struct eval_result res;
    on_case(&gp, 0, set.n);
    if (eval_run(&set, &o, &res, err, err_len)) {
        audit_run(p, e, r, false, err);
        eval_set_free(&set);
        return -1;
    }
    r->ran = true;
    r->score = res.score;
    r->n_cases = set.n;
    snprintf(r->set_sha256, sizeof r->set_sha256, "%s", set.sha256);
    /* The bar: the site's minimum, raised to the active slot's score less the allowed
     * regression when that score was measured on these very bytes. */
    r->threshold = p->min_score;
    bool regression_checked = p->max_regression >= 0 && have_active;
    if (regression_checked && active_score - p->max_regression > r->threshold)
        r->threshold = active_score - p->max_regression;
    /* A tiny epsilon: the score is k/n, the threshold typed in decimal. */
    bool passed = r->score + 1e-9 >= r->threshold;
    int rc = 0;
    if (!passed) {
        char worst[900];
        eval_worst_summary(&set, &res, 5, worst, sizeof worst);
        uint32_t n_pass = 0;
        for (uint32_t i = 0; i < res.n; i++) n_pass += (uint32_t)res.cases[i].score;
        rc = errf(err, err_len, "score %.4f (%u of %u cases) is below the threshold %.4f (%s); worst cases: %s", r->score,
                  n_pass, set.n, r->threshold,
                  regression_checked && r->threshold > p->min_score ? "the active slot's score less eval_max_regression"
                                                                    : "eval_min_score",
                  worst);
    }
    audit_run(p, e, r, passed, err);
    eval_result_free(&res);
    eval_set_free(&set);
    return rc;
}
