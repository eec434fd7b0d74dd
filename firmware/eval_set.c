/* Evaluation sets: the JSON-lines parser and the text scorers (see eval_set.h). The chat
 * part of a case goes through request_parse_chat, so a case is checked by the same rules
 * as an HTTP request; every message says the set's name and the line. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "firmware/eval_set.h"
#include "common/safe_open.h"

#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/evp.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const scorer_names[EVAL_SCORER_COUNT] = {
    "exact", "contains", "regex", "json_schema", "choice", "reference_logprob",
};

const char *eval_scorer_name(enum eval_scorer s) { return s < EVAL_SCORER_COUNT ? scorer_names[s] : "?"; }

/* Fields that go to the chat request parser unchanged. */
static const char *const request_fields[] = { "messages",   "max_tokens",  "thinking",           "stop",
                                               "tools",      "tool_choice", "parallel_tool_calls", "response_format" };

static bool is_request_field(const char *k)
{
    for (size_t i = 0; i < sizeof request_fields / sizeof request_fields[0]; i++)
        if (!strcmp(k, request_fields[i])) return true;
    return false;
}

static void case_free(struct eval_case *c)
{
    gen_request_free(&c->req);
    pcre2_code_free(c->regex);
    jg_schema_free(c->schema);
    json_decref(c->obj);
    memset(c, 0, sizeof *c);
}

void eval_set_free(struct eval_set *s)
{
    for (uint32_t i = 0; i < s->n; i++) case_free(&s->cases[i]);
    free(s->cases);
    memset(s, 0, sizeof *s);
}

/* The chat request of a case: its request fields, greedy and seeded. */
static int parse_request(struct eval_case *c, char *err, size_t err_len)
{
    json_t *body = json_object();
    if (!body) return errf(err, err_len, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach(c->obj, k, v) {
        if (is_request_field(k)) json_object_set(body, k, v);
    }
    if (!json_object_get(body, "max_tokens")) json_object_set_new(body, "max_tokens", json_integer(EVAL_DEFAULT_MAX_TOKENS));
    json_object_set_new(body, "temperature", json_real(0));
    json_object_set_new(body, "seed", json_integer(0));
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) return errf(err, err_len, "out of memory");
    struct req_limits lim;
    req_limits_default(&lim);
    lim.max_body_bytes = EVAL_MAX_LINE_BYTES * 2ull;
    int rc = request_parse_chat(text, strlen(text), &lim, &c->req, err, err_len);
    free(text);
    return rc;
}

static int parse_regex(struct eval_case *c, char *err, size_t err_len)
{
    int code;
    PCRE2_SIZE off;
    c->regex = pcre2_compile((PCRE2_SPTR)c->expected, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &code,
                             &off, NULL);
    if (c->regex) return 0;
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(code, msg, sizeof msg);
    return errf(err, err_len, "expected: regex does not compile at offset %zu: %s", (size_t)off, (const char *)msg);
}

/* The schema through the engine's compiler, the one structured output uses: the set's
 * author gets its messages with the place inside "expected" ("type: unknown type ..."). */
static int compile_schema(struct eval_case *c, const json_t *exp, char *err, size_t err_len)
{
    char *text = json_dumps(exp, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) return errf(err, err_len, "out of memory");
    int rc = jg_schema_compile(&c->schema, text, strlen(text), err, err_len);
    free(text);
    if (rc && err && !strncmp(err, "schema.", 7)) memmove(err, err + 7, strlen(err + 7) + 1);
    return rc;
}

static int parse_options(struct eval_case *c, const json_t *opts, const json_t *exp, char *err, size_t err_len)
{
    if (!json_is_array(opts) || json_array_size(opts) < 2 || json_array_size(opts) > EVAL_MAX_OPTIONS)
        return errf(err, err_len, "options: the choice scorer needs a list of 2 to %d strings", EVAL_MAX_OPTIONS);
    c->n_options = (uint32_t)json_array_size(opts);
    for (uint32_t i = 0; i < c->n_options; i++) {
        const json_t *o = json_array_get(opts, i);
        if (!json_is_string(o) || json_string_length(o) == 0)
            return errf(err, err_len, "options[%u]: expected a non-empty string", i);
        c->options[i] = json_string_value(o);
        for (uint32_t j = 0; j < i; j++)
            if (!strcmp(c->options[j], c->options[i])) return errf(err, err_len, "options[%u]: repeats options[%u]", i, j);
    }
    c->expected_option = -1;
    if (!exp) return 0;
    if (json_is_integer(exp)) {
        json_int_t k = json_integer_value(exp);
        if (k < 0 || k >= (json_int_t)c->n_options)
            return errf(err, err_len, "expected: option index %lld, expected 0 to %u", (long long)k, c->n_options - 1);
        c->expected_option = (int32_t)k;
        return 0;
    }
    if (json_is_string(exp))
        for (uint32_t i = 0; i < c->n_options; i++)
            if (!strcmp(c->options[i], json_string_value(exp))) {
                c->expected_option = (int32_t)i;
                return 0;
            }
    return errf(err, err_len, "expected: must be one of the options (its text or its index)");
}

static int parse_case(struct eval_case *c, bool recording, char *err, size_t err_len)
{
    const char *k;
    json_t *v;
    json_object_foreach(c->obj, k, v) {
        if (!is_request_field(k) && strcmp(k, "id") && strcmp(k, "scorer") && strcmp(k, "expected") && strcmp(k, "options") &&
            strcmp(k, "reference_logprob") && strcmp(k, "tolerance"))
            return errf(err, err_len, "%.64s: unknown field", k);
    }
    const json_t *id = json_object_get(c->obj, "id");
    if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > EVAL_MAX_ID)
        return errf(err, err_len, "id: expected a string of 1 to %d bytes", EVAL_MAX_ID);
    if (strlen(json_string_value(id)) != json_string_length(id)) return errf(err, err_len, "id: contains a NUL");
    snprintf(c->id, sizeof c->id, "%s", json_string_value(id));
    const json_t *sc = json_object_get(c->obj, "scorer");
    if (!json_is_string(sc)) return errf(err, err_len, "scorer: expected one of exact, contains, regex, json_schema, choice, reference_logprob");
    c->scorer = EVAL_SCORER_COUNT;
    for (int i = 0; i < EVAL_SCORER_COUNT; i++)
        if (!strcmp(json_string_value(sc), scorer_names[i])) c->scorer = (enum eval_scorer)i;
    if (c->scorer == EVAL_SCORER_COUNT)
        return errf(err, err_len, "scorer: \"%.40s\" is not one of exact, contains, regex, json_schema, choice, reference_logprob",
                    json_string_value(sc));
    const json_t *exp = json_object_get(c->obj, "expected");
    const json_t *opts = json_object_get(c->obj, "options");
    const json_t *base = json_object_get(c->obj, "reference_logprob"), *tol = json_object_get(c->obj, "tolerance");
    if (opts && c->scorer != EVAL_SCORER_CHOICE) return errf(err, err_len, "options: only the choice scorer takes options");
    if ((base || tol) && c->scorer != EVAL_SCORER_REFERENCE_LOGPROB)
        return errf(err, err_len, "%s: only the reference_logprob scorer takes it", base ? "reference_logprob" : "tolerance");
    bool recordable = c->scorer == EVAL_SCORER_EXACT || c->scorer == EVAL_SCORER_CONTAINS ||
                      c->scorer == EVAL_SCORER_CHOICE || c->scorer == EVAL_SCORER_REFERENCE_LOGPROB;
    if (!exp && !(recording && recordable))
        return errf(err, err_len, "expected: missing (the %s scorer needs it%s)", scorer_names[c->scorer],
                    recordable ? "; `flashbox eval --record` fills it from a trusted model" : "");
    c->has_expected = exp != NULL;
    switch (c->scorer) {
    case EVAL_SCORER_CHOICE:
        if (parse_options(c, opts, exp, err, err_len)) return -1;
        break;
    case EVAL_SCORER_JSON_SCHEMA:
        if (compile_schema(c, exp, err, err_len)) return errf_prefix(err, err_len, "expected");
        break;
    default:
        if (exp && !json_is_string(exp)) return errf(err, err_len, "expected: the %s scorer needs a string", scorer_names[c->scorer]);
        if (exp && strlen(json_string_value(exp)) != json_string_length(exp)) return errf(err, err_len, "expected: contains a NUL");
        c->expected = exp ? json_string_value(exp) : NULL;
        if (c->scorer == EVAL_SCORER_REGEX && parse_regex(c, err, err_len)) return -1;
        if (c->scorer == EVAL_SCORER_REFERENCE_LOGPROB && c->expected && !c->expected[0])
            return errf(err, err_len, "expected: the reference answer is empty");
        break;
    }
    if (c->scorer == EVAL_SCORER_REFERENCE_LOGPROB) {
        if (base) {
            if (!json_is_number(base) || !(json_number_value(base) <= 0) || !isfinite(json_number_value(base)))
                return errf(err, err_len, "reference_logprob: expected a finite number <= 0");
            c->has_baseline = true;
            c->baseline_logprob = json_number_value(base);
        } else if (!recording) {
            return errf(err, err_len, "reference_logprob: missing (`flashbox eval --record` measures it on a trusted model)");
        }
        c->tolerance = EVAL_DEFAULT_TOLERANCE;
        if (tol) {
            if (!json_is_number(tol) || !(json_number_value(tol) >= 0) || !isfinite(json_number_value(tol)))
                return errf(err, err_len, "tolerance: expected a finite number >= 0");
            c->tolerance = json_number_value(tol);
        }
    }
    return parse_request(c, err, err_len);
}

int eval_set_parse(const char *text, size_t len, const char *name, bool recording, struct eval_set *out, char *err,
                   size_t err_len)
{
    memset(out, 0, sizeof *out);
    uint32_t line = 0;
    size_t cap = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        const char *s = text + pos;
        pos += n + (nl ? 1 : 0);
        line++;
        size_t t = n;
        if (t && s[t - 1] == '\r') t--;
        bool blank = true;
        for (size_t i = 0; i < t && blank; i++) blank = s[i] == ' ' || s[i] == '\t';
        if (blank) continue;
        if (t > EVAL_MAX_LINE_BYTES) {
            eval_set_free(out);
            return errf(err, err_len, "%s:%u: %zu bytes, at most %d per case", name, line, t, EVAL_MAX_LINE_BYTES);
        }
        if (out->n == EVAL_MAX_CASES) {
            eval_set_free(out);
            return errf(err, err_len, "%s:%u: more than %d cases", name, line, EVAL_MAX_CASES);
        }
        if (out->n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct eval_case *g = realloc(out->cases, nc * sizeof *g);
            if (!g) {
                eval_set_free(out);
                return errf(err, err_len, "%s: out of memory", name);
            }
            out->cases = g;
            cap = nc;
        }
        struct eval_case *c = &out->cases[out->n];
        memset(c, 0, sizeof *c);
        out->n++;
        c->line = line;
        json_error_t je;
        c->obj = json_loadb(s, t, JSON_REJECT_DUPLICATES, &je);
        int rc;
        if (!c->obj) rc = errf(err, err_len, "invalid JSON at column %d: %s", je.column, je.text);
        else if (!json_is_object(c->obj)) rc = errf(err, err_len, "expected one JSON object per line");
        else rc = parse_case(c, recording, err, err_len);
        for (uint32_t i = 0; !rc && i + 1 < out->n; i++)
            if (!strcmp(out->cases[i].id, c->id))
                rc = errf(err, err_len, "id \"%s\" already used on line %u", c->id, out->cases[i].line);
        if (rc) {
            errf_prefix(err, err_len, "%s:%u", name, line);
            eval_set_free(out);
            return -1;
        }
        out->per_scorer[c->scorer]++;
    }
    if (out->n == 0) return errf(err, err_len, "%s: no cases (one JSON object per line)", name);
    return 0;
}

int eval_set_load(const char *path, bool recording, struct eval_set *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    /* One read into memory: what is hashed is exactly what is parsed, even if the file
     * changes on disk meanwhile. The size bound keeps a wrong path from filling memory. */
    const uint64_t max = (uint64_t)EVAL_MAX_CASES * 4096;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int rc = buf ? 0 : errf(err, err_len, "%s: out of memory", path);
    while (!rc) {
        if (len == cap) {
            char *g = cap < max ? realloc(buf, cap * 2) : NULL;
            if (!g) {
                rc = errf(err, err_len, "%s: larger than %llu bytes", path, (unsigned long long)max);
                break;
            }
            buf = g;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + len, cap - len);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) rc = errf(err, err_len, "%s: %s", path, strerror(errno));
        if (k <= 0) break;
        len += (size_t)k;
    }
    close(fd);
    unsigned char md[32];
    unsigned int md_len = 0;
    if (!rc && !EVP_Digest(buf, len, md, &md_len, EVP_sha256(), NULL)) rc = errf(err, err_len, "%s: SHA-256 failed", path);
    if (!rc) rc = eval_set_parse(buf, len, path, recording, out, err, err_len);
    if (!rc)
        for (unsigned i = 0; i < 32; i++) snprintf(out->sha256 + 2 * i, 3, "%02x", md[i]);
    free(buf);
    return rc;
}

int eval_score_text(const struct eval_case *c, const char *answer, size_t len, char *why, size_t why_len)
{
    char ignored[8];
    if (!why) {
        why = ignored;
        why_len = sizeof ignored;
    }
    why[0] = 0;
    switch (c->scorer) {
    case EVAL_SCORER_EXACT:
        if (strlen(c->expected) == len && !memcmp(c->expected, answer, len)) return 1;
        errf(why, why_len, "the answer differs from the expected text");
        return 0;
    case EVAL_SCORER_CONTAINS:
        if (memmem(answer, len, c->expected, strlen(c->expected))) return 1;
        errf(why, why_len, "the answer does not contain the expected text");
        return 0;
    case EVAL_SCORER_REGEX: {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(c->regex, NULL);
        int r = md ? pcre2_match(c->regex, (PCRE2_SPTR)answer, len, 0, 0, md, NULL) : PCRE2_ERROR_NOMEMORY;
        pcre2_match_data_free(md);
        if (r >= 0) return 1;
        errf(why, why_len, r == PCRE2_ERROR_NOMATCH ? "the answer does not match the pattern" : "regex match error %d", r);
        return 0;
    }
    case EVAL_SCORER_JSON_SCHEMA:
        if (jg_schema_validate(c->schema, answer, len, why, why_len) == 0) return 1;
        if (!strncmp(why, "not JSON", 8)) {
            char said[256];
            snprintf(said, sizeof said, "%s", why);
            errf(why, why_len, "the answer is %s", said);
        }
        return 0;
    default:
        errf(why, why_len, "%s is not a text scorer", eval_scorer_name(c->scorer));
        return 0;
    }
}
