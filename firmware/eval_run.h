/* Runs an evaluation set (eval_set.h) on a model file: per case the greedy answer through
 * the daemon's text side (textgen.h: chat encoding, greedy sampler, stop logic, streaming
 * detokenizer) or the log-probabilities of given continuations (choice, reference_logprob),
 * then the case's scorer. Greedy and seeded, so a run is reproducible: the same model, set
 * and backend give the same answers and scores, with any number of jobs.
 *
 * jobs > 1 opens that many engines on the file (the weights are shared through the page
 * cache where the backend maps them) and hands out cases in order; results are kept per
 * case, so the report does not depend on which job ran which case. */
#ifndef FLASHBOX_FIRMWARE_EVAL_RUN_H
#define FLASHBOX_FIRMWARE_EVAL_RUN_H

#include "engine/engine.h"
#include "firmware/eval_set.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct eval_run_opts {
    const char *model_path;
    enum engine_backend backend;  /* ref or vulkan (resolve auto before) */
    uint32_t jobs;                /* engines working at once; 0 counts as 1 */
    /* Called after each case (from the job that finished it, serialized): cases done/total. */
    void (*progress)(void *user, uint32_t done, uint32_t total);
    void *user;
    /* Polled between cases and tokens; nonzero stops the run with an error. */
    const volatile int *cancel;
};

struct eval_case_result {
    int score;                    /* 1 pass, 0 fail */
    char *answer;                 /* the greedy answer (malloc'd), or NULL when the scorer needs none */
    uint32_t n_tokens;            /* generated tokens */
    double logprob;               /* reference_logprob: mean log-probability per token of the reference;
                                     choice: summed log-probability of the chosen option */
    int32_t chosen;               /* choice: the option with the highest summed log-probability */
    bool error;                   /* the case could not run (why says why) */
    char why[256];                /* why the case failed ("" when it passed) */
};

struct eval_result {
    struct eval_case_result *cases; /* [n], in set order */
    uint32_t n;
    double score;                 /* mean of the case scores, 0..1 */
    double scorer_score[EVAL_SCORER_COUNT]; /* per scorer (cases of that scorer), -1 when none */
    double seconds;               /* wall time of the run */
};

/* Every case is run; a case that cannot run (prompt longer than the context, ...) scores 0
 * with the reason. Returns -1 only when the model can not be opened, on cancel, or out of
 * memory. */
int eval_run(const struct eval_set *set, const struct eval_run_opts *o, struct eval_result *r, char *err,
             size_t err_len);
void eval_result_free(struct eval_result *r);

/* Indices of up to k failing cases, the worst first (set order among equals); returns the count. */
uint32_t eval_worst_cases(const struct eval_set *set, const struct eval_result *r, uint32_t *idx, uint32_t k);
/* "case 'x' (line 3): why; ..." for up to k of the worst cases, into buf. */
void eval_worst_summary(const struct eval_set *set, const struct eval_result *r, uint32_t k, char *buf, size_t len);

/* The JSON report: model, set (path, SHA-256, cases), scores per scorer and overall, and
 * per case id, line, scorer, score, why, and the answer or log-probabilities. */
json_t *eval_report_json(const char *model_path, const char *set_path, const struct eval_set *set,
                         const struct eval_result *r);

/* The set with its expected answers filled from r (a --record run), one JSON line per case,
 * written atomically to path. */
int eval_record_write(const char *path, const struct eval_set *set, const struct eval_result *r, char *err,
                      size_t err_len);

#endif
