/* The site's evaluation policy on updates: after the self-test and before the switch, the
 * new slot's model runs the site's evaluation set (eval_run.h) and is refused when its score
 * is below eval_min_score, or more than eval_max_regression below the active slot's last
 * score on the same set. Wired into update_install as its update_evaluate_fn, by
 * `flashbox update install` and by the admin socket's install alike; every run is an audit
 * event carrying the set's SHA-256. */
#ifndef FLASHBOX_FIRMWARE_EVAL_GATE_H
#define FLASHBOX_FIRMWARE_EVAL_GATE_H

#include "engine/engine.h"
#include "update/update.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct eval_policy {
    const char *set_path;         /* the site's set; NULL or "": no policy */
    double min_score;             /* 0..1 */
    double max_regression;        /* < 0: off; else the most the score may drop below the active slot's */
    enum engine_backend backend;
    uint32_t jobs;
    const volatile int *cancel;   /* nonzero: stop (the slot is then refused, not activated) */
};

/* min_score/max_regression as given on a command line or in the config: "0.9" -> 0.9. */
int eval_policy_parse_unit(const char *text, double *out);

/* An update_evaluate_fn; user is a struct eval_policy *. */
int eval_gate_evaluate(void *user, const struct update_eval *e, struct update_eval_result *r, char *err,
                       size_t err_len);

#endif
