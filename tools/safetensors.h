/* safetensors shards: the 8-byte little-endian header length, the JSON header (parsed with
 * jansson) and bounds-checked reads of tensor data.
 *
 * Every tensor's dtype, shape and data range is checked when the header is parsed: the
 * range must lie inside the file, its length must equal the shape times the dtype size, and
 * no two tensors may overlap. Afterwards the structs can be trusted. */
#ifndef FLASHBOX_TOOLS_SAFETENSORS_H
#define FLASHBOX_TOOLS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (256ull << 20) /* bytes; Flash shards have headers of ~200 KB */
#define ST_MAX_NAME 512

enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64,
    ST_F16, ST_BF16, ST_F32, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_F8_E8M0,
    ST_DTYPE_COUNT,
};

struct st_tensor {
    char *name;                     /* NUL-terminated copy */
    enum st_dtype dtype;
    uint32_t n_dims;
    uint64_t shape[ST_MAX_DIMS];    /* PyTorch order: outermost first */
    uint64_t n_elements;
    uint64_t offset;                /* absolute byte offset in the file */
    uint64_t nbytes;
};

struct st_file {
    char *path;          /* copy, for messages */
    int fd;              /* -1 for a parsed image */
    uint64_t size;       /* bytes */
    uint64_t data_offset;/* 8 + header length */
    size_t n_tensors;
    struct st_tensor *tensors; /* [n_tensors], in header order */
};

const char *st_dtype_name(enum st_dtype d);
uint32_t st_dtype_size(enum st_dtype d); /* bytes per element */

/* Opens and parses a shard. Messages name the file and the tensor. */
int st_open(struct st_file **out, const char *path, char *err, size_t err_len);
/* Parses an in-memory image of a whole shard (used by the fuzz target and tests); the
 * result has fd -1 and cannot read data. */
int st_parse(struct st_file **out, const void *image, uint64_t size, const char *what, char *err, size_t err_len);
void st_close(struct st_file *f);

/* Reads nbytes at byte offset off of tensor t (bounds-checked against the tensor). */
int st_read(const struct st_file *f, const struct st_tensor *t, uint64_t off, void *dst, uint64_t nbytes,
            char *err, size_t err_len);

#endif
