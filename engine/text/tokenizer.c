/* Byte-level BPE: vocabulary loading, encoding with merges by rank, decoding and the
 * streaming detokenizer (see tokenizer.h). */
#include "engine/text/tokenizer.h"

#include "common/errmsg.h"
#include "engine/model/gguf.h"
#include "engine/text/pretok.h"

#include <stdlib.h>
#include <string.h>

/* Open-addressing hash table slot for a merge: the pair (left id, right id) merges into
 * result, with priority rank (lower merges first). */
struct merge_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t result;
};

/* Most tokens or merges a vocabulary may have (real ones have ~10^5); keeps every hash
 * table size a 32-bit power of two. */
#define TOK_MAX_ENTRIES (1u << 28)

struct tokenizer {
    uint32_t n_vocab;
    int32_t bos, eos;
    struct pretok *pre;

    /* vocabulary text: token i is text_pool[text_off[i], text_off[i + 1]) */
    char *text_pool;
    uint32_t *text_off;  /* [n_vocab + 1] */
    uint8_t *type;       /* [n_vocab], enum tok_type */
    /* decoded bytes: token i decodes to piece_pool[piece_off[i], piece_off[i + 1]) */
    char *piece_pool;
    uint32_t *piece_off; /* [n_vocab + 1] */
    size_t max_piece;

    /* text -> id: slot holds id + 1, 0 = empty */
    uint32_t *text_hash; /* [text_hash_cap], power of two */
    uint32_t text_hash_cap;

    struct merge_slot *merges; /* [merge_cap], power of two */
    uint32_t merge_cap;
    uint32_t n_merges;

    int32_t byte_tok[256]; /* the token of each byte's byte-level symbol */

    /* control and user-defined tokens for matching in text: ids sorted by first byte,
     * then longest first; tokens starting with byte b are special_ids[special_first[b],
     * special_first[b + 1]) */
    int32_t *special_ids;
    uint32_t n_special;
    uint32_t special_first[257];
};

/* ---- the GPT-2 byte <-> symbol mapping ---------------------------------------------
 * Printable bytes (! .. ~, ¡ .. ¬, ® .. ÿ) stand for themselves; the other 68 bytes map,
 * in increasing order, to U+0100, U+0101, ... so that every byte is a visible symbol. */

static bool byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_symbol(unsigned b)
{
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (unsigned i = 0; i < b; i++)
        if (!byte_is_printable(i)) k++;
    return 0x100 + k;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one UTF-8 sequence at s (n bytes left); returns its length, or 0 if invalid. */
static size_t utf8_get(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (n == 0) return 0;
    uint8_t b = s[0];
    size_t len;
    uint32_t c, min;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if ((b & 0xE0) == 0xC0) {
        len = 2, c = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
        len = 3, c = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

/* ---- hashing ------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; /* murmur3 finalizer */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static int32_t find_text(const struct tokenizer *t, const char *s, size_t n)
{
    uint32_t mask = t->text_hash_cap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        uint32_t slot = t->text_hash[i];
        if (!slot) return -1;
        uint32_t id = slot - 1;
        if (t->text_off[id + 1] - t->text_off[id] == n && !memcmp(t->text_pool + t->text_off[id], s, n))
            return (int32_t)id;
    }
}

static const struct merge_slot *find_merge(const struct tokenizer *t, int32_t left, int32_t right)
{
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t mask = t->merge_cap - 1;
    for (uint32_t i = (uint32_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
    }
}

/* ---- loading ------------------------------------------------------------------------ */

static const struct gguf_kv *find_str_array(const struct gguf_file *f, const char *key, bool required, char *err,
                                            size_t err_len, int *rc)
{
    *rc = 0;
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) {
        if (required) *rc = errf(err, err_len, "%s: missing", key);
        return NULL;
    }
    if (kv->type != GGUF_VAL_ARRAY || kv->arr_type != GGUF_VAL_STRING) {
        *rc = errf(err, err_len, "%s: expected an array of strings", key);
        return NULL;
    }
    return kv;
}

static int load_vocab(struct tokenizer *t, const struct gguf_kv *tokens, const struct gguf_kv *types, char *err,
                      size_t err_len)
{
    uint64_t n = tokens->arr_count;
    if (n == 0 || n > TOK_MAX_ENTRIES)
        return errf(err, err_len, "tokenizer.ggml.tokens: %llu entries, expected 1 .. %u", (unsigned long long)n,
                    TOK_MAX_ENTRIES);
    if (types && types->arr_count != n)
        return errf(err, err_len, "tokenizer.ggml.token_type: %llu entries, expected %llu (one per token)",
                    (unsigned long long)types->arr_count, (unsigned long long)n);
    t->n_vocab = (uint32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) total += tokens->arr_strs[i].len; /* each < file size */
    if (total > UINT32_MAX / 4) return errf(err, err_len, "tokenizer.ggml.tokens: %llu bytes of text, too large",
                                            (unsigned long long)total);
    t->text_pool = malloc(total ? total : 1);
    t->text_off = malloc((n + 1) * sizeof *t->text_off);
    t->type = malloc(n);
    t->text_hash_cap = pow2_at_least(2 * n);
    t->text_hash = calloc(t->text_hash_cap, sizeof *t->text_hash);
    if (!t->text_pool || !t->text_off || !t->type || !t->text_hash)
        return errf(err, err_len, "tokenizer: out of memory for %llu tokens", (unsigned long long)n);
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const struct gguf_str *s = &tokens->arr_strs[i];
        t->text_off[i] = off;
        memcpy(t->text_pool + off, s->ptr, s->len);
        off += (uint32_t)s->len;
        int64_t ty = TOK_TYPE_NORMAL;
        if (types && gguf_arr_get_i64(types, i, &ty))
            return errf(err, err_len, "tokenizer.ggml.token_type: expected an integer array");
        if (ty < TOK_TYPE_UNDEFINED || ty > TOK_TYPE_BYTE)
            return errf(err, err_len, "tokenizer.ggml.token_type[%llu]: %lld, expected 0 .. 6",
                        (unsigned long long)i, (long long)ty);
        t->type[i] = (uint8_t)ty;
    }
    t->text_off[n] = off;
    /* Later duplicates of a text win over earlier ones only if no earlier one exists:
     * the first id of a text is the one encoding produces. */
    uint32_t mask = t->text_hash_cap - 1;
    for (uint32_t id = 0; id < n; id++) {
        const char *s = t->text_pool + t->text_off[id];
        size_t len = t->text_off[id + 1] - t->text_off[id];
        if (find_text(t, s, len) >= 0) continue;
        uint32_t i = (uint32_t)hash_bytes(s, len) & mask;
        while (t->text_hash[i]) i = (i + 1) & mask;
        t->text_hash[i] = id + 1;
    }
    return 0;
}

static int load_merges(struct tokenizer *t, const struct gguf_kv *merges, char *err, size_t err_len)
{
    uint64_t n = merges ? merges->arr_count : 0;
    if (n > TOK_MAX_ENTRIES)
        return errf(err, err_len, "tokenizer.ggml.merges: %llu entries, expected at most %u", (unsigned long long)n,
                    TOK_MAX_ENTRIES);
    t->merge_cap = pow2_at_least(2 * n + 1);
    t->merges = malloc((size_t)t->merge_cap * sizeof *t->merges);
    if (!t->merges) return errf(err, err_len, "tokenizer: out of memory for %llu merges", (unsigned long long)n);
    for (uint32_t i = 0; i < t->merge_cap; i++) t->merges[i].key = UINT64_MAX;
    char *joined = NULL;
    size_t joined_cap = 0;
    uint32_t mask = t->merge_cap - 1;
    for (uint64_t r = 0; r < n; r++) {
        const struct gguf_str *s = &merges->arr_strs[r];
        /* "left right": the separator is the first space after the first byte, so a left
         * part may itself be a space symbol. */
        const char *sp = s->len > 1 ? memchr(s->ptr + 1, ' ', s->len - 1) : NULL;
        if (!sp) {
            free(joined);
            return errf(err, err_len, "tokenizer.ggml.merges[%llu]: \"%.*s\", expected \"left right\"",
                        (unsigned long long)r, (int)(s->len > 60 ? 60 : s->len), s->ptr);
        }
        size_t ll = (size_t)(sp - s->ptr), rl = s->len - ll - 1;
        if (ll + rl > joined_cap) {
            joined_cap = 2 * (ll + rl) + 16;
            char *nj = realloc(joined, joined_cap);
            if (!nj) {
                free(joined);
                return errf(err, err_len, "tokenizer: out of memory");
            }
            joined = nj;
        }
        memcpy(joined, s->ptr, ll);
        memcpy(joined + ll, sp + 1, rl);
        int32_t left = find_text(t, s->ptr, ll), right = find_text(t, sp + 1, rl);
        int32_t result = find_text(t, joined, ll + rl);
        /* A merge whose parts or result are not in the vocabulary can never produce a
         * token; HF and llama.cpp would fall back to bytes there, which skipping it
         * reproduces for every well-formed vocabulary. */
        if (left < 0 || right < 0 || result < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        uint32_t i = (uint32_t)hash_u64(key) & mask;
        while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & mask;
        if (t->merges[i].key == key) continue; /* a repeated merge keeps its first rank */
        t->merges[i].key = key;
        t->merges[i].rank = (uint32_t)r;
        t->merges[i].result = result;
        t->n_merges++;
    }
    free(joined);
    return 0;
}

/* Decoded bytes of every token, computed once so decoding is a table lookup. */
static int build_pieces(struct tokenizer *t, char *err, size_t err_len)
{
    int16_t sym_byte[0x180]; /* byte-level symbol code point -> byte, -1 if not a symbol */
    for (size_t i = 0; i < sizeof sym_byte / sizeof sym_byte[0]; i++) sym_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++) sym_byte[byte_symbol(b)] = (int16_t)b;

    size_t pool_len = t->text_off[t->n_vocab]; /* a piece is never longer than its text */
    t->piece_pool = malloc(pool_len ? pool_len : 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->piece_pool || !t->piece_off) return errf(err, err_len, "tokenizer: out of memory");
    uint32_t off = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text_pool + t->text_off[id];
        size_t len = t->text_off[id + 1] - t->text_off[id];
        char *dst = t->piece_pool + off;
        size_t out = 0;
        switch (t->type[id]) {
        case TOK_TYPE_UNUSED:
            break;
        case TOK_TYPE_BYTE: { /* "<0xAB>" */
            static const char hex[] = "0123456789ABCDEF";
            if (len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
                const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
                if (hi && lo) dst[out++] = (char)((hi - hex) * 16 + (lo - hex));
            }
            break;
        }
        case TOK_TYPE_CONTROL:
        case TOK_TYPE_USER_DEFINED:
        case TOK_TYPE_UNKNOWN:
            memcpy(dst, s, len);
            out = len;
            break;
        default: { /* normal: byte-level symbols back to bytes */
            size_t i = 0;
            while (i < len) {
                uint32_t cp;
                size_t l = utf8_get((const uint8_t *)s + i, len - i, &cp);
                if (!l || cp >= 0x180 || sym_byte[cp] < 0) break;
                dst[out++] = (char)sym_byte[cp];
                i += l;
            }
            if (i < len) { /* not byte-level text: keep it as written */
                memcpy(dst, s, len);
                out = len;
            }
        }
        }
        t->piece_off[id] = off;
        off += (uint32_t)out;
        if (out > t->max_piece) t->max_piece = out;
    }
    t->piece_off[t->n_vocab] = off;
    return 0;
}

static int cmp_special(const void *a, const void *b, void *arg)
{
    const struct tokenizer *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint8_t fx = (uint8_t)t->text_pool[t->text_off[x]], fy = (uint8_t)t->text_pool[t->text_off[y]];
    if (fx != fy) return fx < fy ? -1 : 1;
    uint32_t lx = t->text_off[x + 1] - t->text_off[x], ly = t->text_off[y + 1] - t->text_off[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int build_specials(struct tokenizer *t, char *err, size_t err_len)
{
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if ((t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER_DEFINED) &&
            t->text_off[id + 1] > t->text_off[id])
            n++;
    t->special_ids = malloc((n ? n : 1) * sizeof *t->special_ids);
    if (!t->special_ids) return errf(err, err_len, "tokenizer: out of memory");
    n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if ((t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER_DEFINED) &&
            t->text_off[id + 1] > t->text_off[id])
            t->special_ids[n++] = (int32_t)id;
    qsort_r(t->special_ids, n, sizeof *t->special_ids, cmp_special, t);
    t->n_special = n;
    uint32_t i = 0;
    for (unsigned b = 0; b <= 256; b++) {
        while (i < n && (uint8_t)t->text_pool[t->text_off[t->special_ids[i]]] < b) i++;
        t->special_first[b] = i;
    }
    t->special_first[256] = n;
    return 0;
}

int tok_create(struct tokenizer **out, const struct gguf_file *f, char *err, size_t err_len)
{
    *out = NULL;
    char model[64], pre[64];
    if (gguf_get_str(f, "tokenizer.ggml.model", model, sizeof model, err, err_len)) return -1;
    if (strcmp(model, "gpt2"))
        return errf(err, err_len, "tokenizer.ggml.model: \"%s\", expected \"gpt2\" (byte-level BPE)", model);
    if (gguf_find_kv(f, "tokenizer.ggml.pre")) {
        if (gguf_get_str(f, "tokenizer.ggml.pre", pre, sizeof pre, err, err_len)) return -1;
    } else {
        strcpy(pre, "default");
    }
    int rc;
    const struct gguf_kv *tokens = find_str_array(f, "tokenizer.ggml.tokens", true, err, err_len, &rc);
    if (rc) return rc;
    const struct gguf_kv *merges = find_str_array(f, "tokenizer.ggml.merges", false, err, err_len, &rc);
    if (rc) return rc;
    const struct gguf_kv *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
    if (types && types->type != GGUF_VAL_ARRAY)
        return errf(err, err_len, "tokenizer.ggml.token_type: expected an integer array");

    struct tokenizer *t = calloc(1, sizeof *t);
    if (!t) return errf(err, err_len, "tokenizer: out of memory");
    if (pretok_create(&t->pre, pre, err, err_len)) goto fail;
    if (load_vocab(t, tokens, types, err, err_len)) goto fail;
    if (load_merges(t, merges, err, err_len)) goto fail;
    if (build_pieces(t, err, err_len)) goto fail;
    if (build_specials(t, err, err_len)) goto fail;
    for (unsigned b = 0; b < 256; b++) {
        char sym[4];
        size_t n = utf8_put(byte_symbol(b), sym);
        t->byte_tok[b] = find_text(t, sym, n);
        if (t->byte_tok[b] < 0) {
            errf(err, err_len, "tokenizer.ggml.tokens: no token for byte 0x%02X (symbol \"%.*s\"), "
                 "expected all 256 byte symbols of byte-level BPE", b, (int)n, sym);
            goto fail;
        }
    }
    t->bos = t->eos = -1;
    static const char *const id_keys[2] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id" };
    for (int k = 0; k < 2; k++) {
        if (!gguf_find_kv(f, id_keys[k])) continue;
        uint32_t v;
        if (gguf_get_u32(f, id_keys[k], &v, err, err_len)) goto fail;
        if (v >= t->n_vocab) {
            errf(err, err_len, "%s: %u, expected < %u (n_vocab)", id_keys[k], v, t->n_vocab);
            goto fail;
        }
        if (k == 0) t->bos = (int32_t)v;
        else t->eos = (int32_t)v;
    }
    *out = t;
    return 0;
fail:
    tok_destroy(t);
    return -1;
}

int tok_create_from_file(struct tokenizer **out, const char *path, char *err, size_t err_len)
{
    struct gguf_file *f;
    *out = NULL;
    if (gguf_open(&f, path, err, err_len)) return -1;
    int rc = tok_create(out, f, err, err_len);
    if (rc) errf_prefix(err, err_len, "%s", path);
    gguf_close(f);
    return rc;
}

void tok_destroy(struct tokenizer *t)
{
    if (!t) return;
    pretok_destroy(t->pre);
    free(t->text_pool);
    free(t->text_off);
    free(t->type);
    free(t->piece_pool);
    free(t->piece_off);
    free(t->text_hash);
    free(t->merges);
    free(t->special_ids);
    free(t);
}

/* ---- queries ------------------------------------------------------------------------ */

uint32_t tok_n_vocab(const struct tokenizer *t) { return t->n_vocab; }
int32_t tok_bos(const struct tokenizer *t) { return t->bos; }
int32_t tok_eos(const struct tokenizer *t) { return t->eos; }
const char *tok_pre_name(const struct tokenizer *t) { return pretok_name(t->pre); }
size_t tok_max_piece(const struct tokenizer *t) { return t->max_piece; }

static bool id_ok(const struct tokenizer *t, int32_t id) { return id >= 0 && (uint32_t)id < t->n_vocab; }

const char *tok_text(const struct tokenizer *t, int32_t id, size_t *len)
{
    if (!id_ok(t, id)) {
        *len = 0;
        return NULL;
    }
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text_pool + t->text_off[id];
}

enum tok_type tok_get_type(const struct tokenizer *t, int32_t id)
{
    return id_ok(t, id) ? (enum tok_type)t->type[id] : TOK_TYPE_UNDEFINED;
}

bool tok_is_control(const struct tokenizer *t, int32_t id) { return id_ok(t, id) && t->type[id] == TOK_TYPE_CONTROL; }

int32_t tok_find_special(const struct tokenizer *t, const char *text)
{
    int32_t id = find_text(t, text, strlen(text));
    if (id < 0 || (t->type[id] != TOK_TYPE_CONTROL && t->type[id] != TOK_TYPE_USER_DEFINED)) return -1;
    return id;
}

/* ---- encoding ----------------------------------------------------------------------- */

int tok_vec_push(struct tok_vec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *ids = realloc(v->ids, cap * sizeof *ids);
        if (!ids) return -1;
        v->ids = ids;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

void tok_vec_free(struct tok_vec *v)
{
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* A candidate merge of the symbols at left and next[left]. */
struct bigram {
    uint32_t rank;
    uint32_t left;
};

/* Working memory of one encode call, sized to the longest word seen. */
struct bpe_work {
    int32_t *sym;  /* [cap] token id of the symbol starting at byte i, -1 once merged away */
    int32_t *next; /* [cap] index of the next live symbol, -1 at the end */
    int32_t *prev; /* [cap] index of the previous live symbol, -1 at the start */
    struct bigram *heap; /* [3 * cap] min-heap by (rank, left) */
    size_t cap, heap_n;
};

static void work_free(struct bpe_work *w)
{
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->heap);
}

static int work_reserve(struct bpe_work *w, size_t n)
{
    if (n <= w->cap) return 0;
    size_t cap = n < 64 ? 64 : n;
    int32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym) w->sym = sym;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next) w->next = next;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev) w->prev = prev;
    struct bigram *heap = realloc(w->heap, 3 * cap * sizeof *heap);
    if (heap) w->heap = heap;
    if (!sym || !next || !prev || !heap) return -1;
    w->cap = cap;
    return 0;
}

static bool bigram_less(struct bigram a, struct bigram b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.left < b.left;
}

static void heap_push(struct bpe_work *w, struct bigram g)
{
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(g, w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = g;
}

static struct bigram heap_pop(struct bpe_work *w)
{
    struct bigram top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(w->heap[c + 1], w->heap[c])) c++;
        if (!bigram_less(w->heap[c], last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static void try_pair(const struct tokenizer *t, struct bpe_work *w, int32_t left)
{
    if (left < 0 || w->next[left] < 0) return;
    const struct merge_slot *m = find_merge(t, w->sym[left], w->sym[w->next[left]]);
    if (m) heap_push(w, (struct bigram){ m->rank, (uint32_t)left });
}

/* BPE of one pre-tokenized word: start from one symbol per byte, repeatedly merge the
 * adjacent pair of lowest rank (leftmost on ties), append the resulting ids. */
static int bpe_word(const struct tokenizer *t, struct bpe_work *w, const uint8_t *s, size_t n, struct tok_vec *out)
{
    if (n == 1) return tok_vec_push(out, t->byte_tok[s[0]]);
    if (work_reserve(w, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = t->byte_tok[s[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) try_pair(t, w, (int32_t)i);
    while (w->heap_n) {
        struct bigram g = heap_pop(w);
        int32_t left = (int32_t)g.left, right = w->next[left];
        /* Entries go stale when a neighbour merged; a live pair with the same rank is
         * the same merge (ranks are unique), so checking the rank is enough. */
        if (w->sym[left] < 0 || right < 0) continue;
        const struct merge_slot *m = find_merge(t, w->sym[left], w->sym[right]);
        if (!m || m->rank != g.rank) continue;
        w->sym[left] = m->result;
        w->sym[right] = -1;
        w->next[left] = w->next[right];
        if (w->next[right] >= 0) w->prev[w->next[right]] = left;
        try_pair(t, w, w->prev[left]);
        try_pair(t, w, left);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        if (tok_vec_push(out, w->sym[i])) return -1;
    return 0;
}

static int encode_literal(const struct tokenizer *t, const char *text, size_t len, struct pretok_spans *spans,
                          struct bpe_work *w, struct tok_vec *out, char *err, size_t err_len)
{
    if (len == 0) return 0;
    if (pretok_split(t->pre, text, len, spans, err, err_len)) return -1;
    for (size_t i = 0; i < spans->n; i++)
        if (bpe_word(t, w, (const uint8_t *)text + spans->v[i].off, spans->v[i].len, out))
            return errf(err, err_len, "tokenizer: out of memory");
    return 0;
}

/* The longest control / user-defined token starting at text[i], or -1. */
static int32_t special_at(const struct tokenizer *t, const char *text, size_t len, size_t i)
{
    uint8_t b = (uint8_t)text[i];
    for (uint32_t k = t->special_first[b]; k < t->special_first[b + 1]; k++) {
        int32_t id = t->special_ids[k];
        size_t l = t->text_off[id + 1] - t->text_off[id];
        if (l <= len - i && !memcmp(text + i, t->text_pool + t->text_off[id], l)) return id;
    }
    return -1;
}

int tok_encode(const struct tokenizer *t, const char *text, size_t len, unsigned flags, struct tok_vec *out,
               char *err, size_t err_len)
{
    size_t n_before = out->n;
    struct pretok_spans spans = { 0 };
    struct bpe_work w = { 0 };
    int rc = 0;
    if (!(flags & TOK_ENCODE_PARSE_SPECIAL)) {
        rc = encode_literal(t, text, len, &spans, &w, out, err, err_len);
    } else {
        size_t start = 0;
        for (size_t i = 0; i < len && !rc;) {
            int32_t id = t->n_special ? special_at(t, text, len, i) : -1;
            if (id < 0) {
                i++;
                continue;
            }
            rc = encode_literal(t, text + start, i - start, &spans, &w, out, err, err_len);
            if (!rc && tok_vec_push(out, id)) rc = errf(err, err_len, "tokenizer: out of memory");
            i += t->text_off[id + 1] - t->text_off[id];
            start = i;
        }
        if (!rc) rc = encode_literal(t, text + start, len - start, &spans, &w, out, err, err_len);
    }
    if (rc) out->n = n_before;
    pretok_spans_free(&spans);
    work_free(&w);
    return rc;
}

/* ---- decoding ----------------------------------------------------------------------- */

const char *tok_piece(const struct tokenizer *t, int32_t id, unsigned flags, size_t *len)
{
    if (!id_ok(t, id)) {
        *len = 0;
        return NULL;
    }
    if (t->type[id] == TOK_TYPE_CONTROL && !(flags & TOK_DECODE_SPECIAL)) {
        *len = 0;
        return t->piece_pool;
    }
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece_pool + t->piece_off[id];
}

int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **out,
               size_t *out_len, char *err, size_t err_len)
{
    *out = NULL;
    *out_len = 0;
    size_t total = 0, len;
    for (size_t i = 0; i < n; i++) {
        if (!tok_piece(t, ids[i], flags, &len))
            return errf(err, err_len, "token %zu: id %d, expected 0 .. %u", i, ids[i], t->n_vocab - 1);
        total += len;
    }
    char *s = malloc(total + 1);
    if (!s) return errf(err, err_len, "detokenize: out of memory for %zu bytes", total);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = tok_piece(t, ids[i], flags, &len);
        memcpy(s + off, p, len);
        off += len;
    }
    s[off] = 0;
    *out = s;
    *out_len = off;
    return 0;
}

void tok_stream_init(struct tok_stream *s, const struct tokenizer *t, unsigned flags)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->flags = flags;
}

size_t tok_stream_buf_size(const struct tokenizer *t) { return 3 * (t->max_piece + 4); }

/* Length of the UTF-8 sequence a lead byte starts (2..4), or 0 if it cannot lead. */
static uint32_t utf8_seq_len(uint8_t b)
{
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

/* Whether b may follow the bytes held in pending (the lead byte restricts the second). */
static bool utf8_continues(const uint8_t *pending, uint32_t n, uint8_t b)
{
    if ((b & 0xC0) != 0x80) return false;
    if (n != 1) return true;
    switch (pending[0]) {
    case 0xE0: return b >= 0xA0;  /* no overlong 3-byte forms */
    case 0xED: return b <= 0x9F;  /* no surrogates */
    case 0xF0: return b >= 0x90;  /* no overlong 4-byte forms */
    case 0xF4: return b <= 0x8F;  /* nothing above U+10FFFF */
    default: return true;
    }
}

static size_t put_replacement(char *out)
{
    out[0] = (char)0xEF, out[1] = (char)0xBF, out[2] = (char)0xBD;
    return 3;
}

int tok_stream_feed(struct tok_stream *s, int32_t id, char *out, size_t cap)
{
    size_t len;
    const uint8_t *p = (const uint8_t *)tok_piece(s->t, id, s->flags, &len);
    if (!p || cap < tok_stream_buf_size(s->t)) return -1;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint8_t b = p[i];
        if (s->n_pending == 0) {
            i++;
            if (b < 0x80) {
                out[o++] = (char)b;
            } else if (utf8_seq_len(b)) {
                s->pending[s->n_pending++] = b;
            } else {
                o += put_replacement(out + o);
            }
        } else if (utf8_continues(s->pending, s->n_pending, b)) {
            i++;
            s->pending[s->n_pending++] = b;
            if (s->n_pending == utf8_seq_len(s->pending[0])) {
                memcpy(out + o, s->pending, s->n_pending);
                o += s->n_pending;
                s->n_pending = 0;
            }
        } else {
            /* The held sequence is broken: replace it, then look at b afresh. */
            o += put_replacement(out + o);
            s->n_pending = 0;
        }
    }
    return (int)o;
}

int tok_stream_flush(struct tok_stream *s, char *out, size_t cap)
{
    if (s->n_pending == 0) return 0;
    if (cap < 3) return -1;
    s->n_pending = 0;
    return (int)put_replacement(out);
}
