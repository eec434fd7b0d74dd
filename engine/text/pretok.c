/* Pre-tokenizer regexes and the isolating split (see pretok.h). The regexes are the ones
 * the models' HF tokenizers define (as llama.cpp uses them), in PCRE2 syntax; Unicode
 * categories come from PCRE2's tables (UCP), never from hand-made ones. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/text/pretok.h"

#include "common/errmsg.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#define PRETOK_MAX_RE 6

struct pretok_def {
    const char *name;            /* canonical */
    const char *aliases[3];      /* other tokenizer.ggml.pre values meaning the same split */
    const char *re[PRETOK_MAX_RE];
};

/* DeepSeek-LLM's letter class: the cased letters (Lu/Ll/Lt) of the Unicode version its
 * tokenizer was made with, spelled out as ranges in the original regex. */
#define DEEPSEEK_LLM_LETTERS \
    "\\x{41}-\\x{5A}\\x{61}-\\x{7A}\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}" \
    "\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}" \
    "\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}" \
    "\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}" \
    "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}" \
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}" \
    "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}" \
    "\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}" \
    "\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}" \
    "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}" \
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}" \
    "\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}" \
    "\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}" \
    "\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}" \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}" \
    "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}" \
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}" \
    "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}"

/* Whitespace as the HF tokenizers' regex engines read \s: Unicode White_Space (tab .. CR,
 * NEL and the Z categories). PCRE2 10.42's \s under UCP already includes NEL (U+0085);
 * it is named here so the split does not depend on that. */
#define WS "[\\s\\x{85}]"
#define NOT_WS "[^\\s\\x{85}]"

static const struct pretok_def defs[] = {
    { "deepseek-v3", { "joyai-llm", NULL, NULL }, {
        "\\p{N}{1,3}",
        "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
        "|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+[\\r\\n]*"
        "|" WS "*[\\r\\n]+"
        "|" WS "+(?!" NOT_WS ")"
        "|" WS "+",
    } },
    { "deepseek-llm", { NULL, NULL, NULL }, {
        "[\\r\\n]",
        WS "?[" DEEPSEEK_LLM_LETTERS "]+",
        WS "?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
        WS "+$",
        "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+",
        "\\p{N}+",
    } },
    { "gpt2", { "gpt-2", "default", NULL }, {
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\x{85}\\p{L}\\p{N}]+|" WS "+(?!" NOT_WS ")|" WS "+",
    } },
};

struct pretok {
    const struct pretok_def *def;
    int n_re;
    pcre2_code *re[PRETOK_MAX_RE];
};

static const struct pretok_def *find_def(const char *name)
{
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        if (!strcmp(defs[i].name, name)) return &defs[i];
        for (int a = 0; a < 3 && defs[i].aliases[a]; a++)
            if (!strcmp(defs[i].aliases[a], name)) return &defs[i];
    }
    return NULL;
}

int pretok_create(struct pretok **out, const char *name, char *err, size_t err_len)
{
    *out = NULL;
    const struct pretok_def *def = find_def(name);
    if (!def)
        return errf(err, err_len, "pre-tokenizer \"%s\": unknown, expected joyai-llm, deepseek-v3, "
                    "deepseek-llm or gpt2", name);
    struct pretok *p = calloc(1, sizeof *p);
    if (!p) return errf(err, err_len, "pre-tokenizer: out of memory");
    p->def = def;
    for (int i = 0; i < PRETOK_MAX_RE && def->re[i]; i++) {
        int code;
        PCRE2_SIZE at;
        /* DOLLAR_ENDONLY: "$" means the end of the piece, not "before a final newline". */
        p->re[i] = pcre2_compile((PCRE2_SPTR)def->re[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY,
                                 &code, &at, NULL);
        if (!p->re[i]) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            pretok_destroy(p);
            return errf(err, err_len, "pre-tokenizer %s regex %d: %s at offset %zu", def->name, i, (char *)msg,
                        (size_t)at);
        }
        p->n_re = i + 1;
        /* JIT is an optimisation only: without it (e.g. no executable memory) PCRE2's
         * interpreter gives the same matches. */
        pcre2_jit_compile(p->re[i], PCRE2_JIT_COMPLETE);
    }
    *out = p;
    return 0;
}

void pretok_destroy(struct pretok *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_re; i++) pcre2_code_free(p->re[i]);
    free(p);
}

const char *pretok_name(const struct pretok *p) { return p->def->name; }

void pretok_spans_free(struct pretok_spans *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int spans_push(struct pretok_spans *s, uint32_t off, uint32_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct pretok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].off = off;
    s->v[s->n].len = len;
    s->n++;
    return 0;
}

/* Re-splits one piece by one regex into dst: matches and the gaps between them. */
static int split_piece(const pcre2_code *re, const char *text, struct pretok_span piece, pcre2_match_data *md,
                       pcre2_match_context *mctx, struct pretok_spans *dst, char *err, size_t err_len)
{
    PCRE2_SPTR subject = (PCRE2_SPTR)(text + piece.off);
    uint32_t pos = 0, last = 0;
    while (pos < piece.len) {
        int rc = pcre2_match(re, subject, piece.len, pos, 0, md, mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return errf(err, err_len, "pre-tokenizer: regex match failed at byte %u: %s", piece.off + pos,
                        (char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        uint32_t s = (uint32_t)ov[0], e = (uint32_t)ov[1];
        if (e <= s) {
            /* An empty match would loop forever; none of the regexes can produce one, but
             * step over one character if it ever happens. */
            pos = s + 1;
            while (pos < piece.len && (subject[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (s > last && spans_push(dst, piece.off + last, s - last)) goto oom;
        if (spans_push(dst, piece.off + s, e - s)) goto oom;
        last = pos = e;
    }
    if (last < piece.len && spans_push(dst, piece.off + last, piece.len - last)) goto oom;
    return 0;
oom:
    return errf(err, err_len, "pre-tokenizer: out of memory");
}

int pretok_split(const struct pretok *p, const char *text, size_t len, struct pretok_spans *out, char *err,
                 size_t err_len)
{
    out->n = 0;
    if (len > UINT32_MAX) return errf(err, err_len, "pre-tokenizer: text of %zu bytes, expected < 4 GiB", len);
    if (len == 0) return 0;
    int rc = -1;
    struct pretok_spans tmp = { 0 };
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    pcre2_match_context *mctx = pcre2_match_context_create(NULL);
    /* Long runs (e.g. a megabyte of spaces against \s+(?!\S)) need more than the JIT's
     * default 32 KiB stack; grow up to 8 MiB on demand. */
    pcre2_jit_stack *jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!md || !mctx || !jstack) {
        errf(err, err_len, "pre-tokenizer: out of memory");
        goto done;
    }
    pcre2_jit_stack_assign(mctx, NULL, jstack);
    if (spans_push(out, 0, (uint32_t)len)) {
        errf(err, err_len, "pre-tokenizer: out of memory");
        goto done;
    }
    for (int r = 0; r < p->n_re; r++) {
        tmp.n = 0;
        for (size_t i = 0; i < out->n; i++)
            if (split_piece(p->re[r], text, out->v[i], md, mctx, &tmp, err, err_len)) goto done;
        struct pretok_spans swap = *out;
        *out = tmp;
        tmp = swap;
    }
    rc = 0;
done:
    if (rc) out->n = 0;
    pretok_spans_free(&tmp);
    pcre2_jit_stack_free(jstack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
    return rc;
}
