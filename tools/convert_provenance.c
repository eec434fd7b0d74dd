/* The provenance `flashbox convert` records in the GGUF it writes, under the metadata key
 * CONVERT_PROVENANCE_KEY: one JSON object naming the flashbox version, the conversion's
 * parameters and every source file it read with its SHA-256, so that a site can tell which
 * checkpoint bytes a model came from. `bundle create` carries it into the signed manifest.
 * The source files are hashed in a pass of their own before the conversion streams them
 * (the GGUF header, which holds the metadata, is written before the tensors). */
#include "tools/convert.h"
#include "tools/convert_plan.h"

#include "common/errmsg.h"
#include "tools/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int conv_sha256_file(const char *path, char hex[65], char *err, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errf(err, len, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    enum { BUF = 1 << 20 };
    unsigned char *buf = malloc(BUF); /* [BUF] bytes */
    int rc = ctx && buf && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? 0 : errf(err, len, "%s: out of memory", path);
    while (!rc) {
        ssize_t n = read(fd, buf, BUF);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) rc = errf(err, len, "%s: %s", path, strerror(errno));
        if (n <= 0) break;
        if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) rc = errf(err, len, "%s: SHA-256 failed", path);
    }
    unsigned char md[32];
    unsigned int md_len = 0;
    if (!rc && !EVP_DigestFinal_ex(ctx, md, &md_len)) rc = errf(err, len, "%s: SHA-256 failed", path);
    for (unsigned i = 0; !rc && i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    return rc;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int add_file(json_t *files, const char *path, char *err, size_t len)
{
    char hex[65];
    if (conv_sha256_file(path, hex, err, len)) return -1;
    return json_array_append_new(files, json_pack("{s:s,s:s}", "name", base_name(path), "sha256", hex)) ? errf(err, len, "out of memory") : 0;
}

int conv_provenance_add(const struct convert_opts *o, const struct conv_shards *s, struct gguf_writer *w, char *err,
                        size_t len)
{
    static const char *const dense[] = { "q8_0", "bf16", "f16" };
    json_t *files = json_array();
    char path[4096];
    int rc = files ? 0 : errf(err, len, "out of memory");
    snprintf(path, sizeof path, "%s/config.json", o->hf_dir);
    if (!rc) rc = add_file(files, path, err, len);
    snprintf(path, sizeof path, "%s/tokenizer.json", o->tokenizer_dir ? o->tokenizer_dir : o->hf_dir);
    if (!rc) rc = add_file(files, path, err, len);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", o->hf_dir);
    if (!rc && access(path, F_OK) == 0) rc = add_file(files, path, err, len);
    for (size_t i = 0; !rc && i < s->n_files; i++) rc = add_file(files, s->files[i]->path, err, len);
    json_t *p = rc ? NULL
                   : json_pack("{s:s,s:s,s:{s:s,s:b},s:o}", "flashbox_version", FLASHBOX_VERSION, "tool", "flashbox convert",
                               "parameters", "dense", dense[o->dense], "mtp", !o->no_mtp, "source_files", files);
    if (!rc && !p) rc = errf(err, len, "out of memory");
    if (!p) json_decref(files);
    char *text = p ? json_dumps(p, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(p);
    if (!rc && (!text || gguf_writer_add_str(w, CONVERT_PROVENANCE_KEY, text))) rc = errf(err, len, "out of memory");
    free(text);
    return rc;
}
