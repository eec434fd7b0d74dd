/* GGUF v2/v3 files: a bounds-checked mmap reader and a streaming writer.
 *
 * The reader maps the file read-only and validates every count, string length, tensor
 * shape, offset and size against the file size (64-bit, overflow-checked) before anything
 * is used; afterwards the structs below can be trusted. Metadata values and tensor data
 * point into the mapping. The writer produces files llama.cpp reads (v3, alignment 32 by
 * default, tensor data in registration order). */
#ifndef FLASHBOX_ENGINE_GGUF_H
#define FLASHBOX_ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types (GGUF spec numbering). */
enum gguf_val {
    GGUF_VAL_UINT8 = 0, GGUF_VAL_INT8 = 1, GGUF_VAL_UINT16 = 2, GGUF_VAL_INT16 = 3,
    GGUF_VAL_UINT32 = 4, GGUF_VAL_INT32 = 5, GGUF_VAL_FLOAT32 = 6, GGUF_VAL_BOOL = 7,
    GGUF_VAL_STRING = 8, GGUF_VAL_ARRAY = 9, GGUF_VAL_UINT64 = 10, GGUF_VAL_INT64 = 11,
    GGUF_VAL_FLOAT64 = 12,
};

/* Tensor types (ggml numbering). Only these are accepted by the reader. */
enum gguf_type {
    GGUF_TYPE_F32 = 0,
    GGUF_TYPE_F16 = 1,
    GGUF_TYPE_Q8_0 = 8,
    GGUF_TYPE_Q2_K = 10,    /* the K-quants and i-quants: engine/model/quant_k.c, engine/model/quant_iq.c */
    GGUF_TYPE_Q3_K = 11,
    GGUF_TYPE_Q4_K = 12,
    GGUF_TYPE_Q5_K = 13,
    GGUF_TYPE_Q6_K = 14,
    GGUF_TYPE_IQ2_XXS = 16,
    GGUF_TYPE_IQ2_XS = 17,
    GGUF_TYPE_IQ3_XXS = 18,
    GGUF_TYPE_IQ1_S = 19,
    GGUF_TYPE_IQ4_NL = 20,
    GGUF_TYPE_IQ2_S = 22,
    GGUF_TYPE_IQ4_XS = 23,
    GGUF_TYPE_I32 = 26,
    GGUF_TYPE_IQ1_M = 29,
    GGUF_TYPE_BF16 = 30,
    GGUF_TYPE_MXFP4 = 39,
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32u

struct gguf_str {
    const char *ptr; /* into the mapping, not NUL-terminated */
    uint64_t len;
};

struct gguf_kv {
    char *key;              /* NUL-terminated copy */
    enum gguf_val type;
    union {
        uint64_t u64;       /* every unsigned integer type and bool */
        int64_t i64;        /* every signed integer type */
        double f64;         /* FLOAT32 and FLOAT64 */
        struct gguf_str str;
    } v;
    /* arrays */
    enum gguf_val arr_type;
    uint64_t arr_count;
    const uint8_t *arr_data;     /* packed elements in the mapping (non-string arrays) */
    struct gguf_str *arr_strs;   /* [arr_count] for string arrays, else NULL */
};

struct gguf_tensor {
    char *name;                     /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];     /* innermost first; unused dims are 1 */
    enum gguf_type type;
    uint64_t n_elements;
    uint64_t offset;                /* from the start of the data section */
    uint64_t nbytes;
    const void *data;               /* into the mapping, or owned (below) */
    void *owned;                    /* data this entry owns (an F32 copy made when a model binds an F16
                                     * or BF16 vector, engine/model/model.c), freed by gguf_close; else NULL */
};

struct gguf_file {
    int fd;
    const uint8_t *map;
    uint64_t size;          /* bytes */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;   /* absolute offset of the data section */
    uint64_t n_kv;
    struct gguf_kv *kv;     /* [n_kv] */
    uint64_t n_tensors;
    struct gguf_tensor *tensors; /* [n_tensors] */
};

/* Bytes of one metadata value of a fixed-size type; 0 for strings, arrays and unknown types. */
uint64_t gguf_val_size(enum gguf_val t);

/* Type facts. Unknown types: block size 0. */
uint32_t gguf_type_block_elems(enum gguf_type type);
uint32_t gguf_type_block_bytes(enum gguf_type type);
const char *gguf_type_name(enum gguf_type type);
bool gguf_type_known(uint32_t type);
/* The type named name (gguf_type_name's spelling, any case: "q2_k", "IQ2_XXS"); -1 if none. */
int gguf_type_from_name(const char *name);
/* Bytes of n elements of type (n a multiple of the block size); -1 on overflow/mismatch. */
int gguf_type_nbytes(enum gguf_type type, uint64_t n, uint64_t *nbytes);

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_len);
/* Parses an in-memory image (not copied; must outlive the result). Used by fuzzing. */
int gguf_parse(struct gguf_file **out, const void *buf, uint64_t size, char *err, size_t err_len);
void gguf_close(struct gguf_file *f);

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* Typed getters: any integer type that fits converts; messages name the key. A missing key
 * is an error (-1) with "missing" in the message; use gguf_find_kv first for optional keys. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_len);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, char *err, size_t err_len);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, char *err, size_t err_len);
/* Copies the string into out (NUL-terminated); error if it does not fit. */
int gguf_get_str(const struct gguf_file *f, const char *key, char *out, size_t out_len, char *err, size_t err_len);
/* Array element access (numeric arrays; integer or float elements convert). */
int gguf_arr_get_i64(const struct gguf_kv *kv, uint64_t i, int64_t *out);
int gguf_arr_get_f64(const struct gguf_kv *kv, uint64_t i, double *out);

/* ---- writer ---- */

struct gguf_writer;

struct gguf_writer *gguf_writer_create(void);
void gguf_writer_destroy(struct gguf_writer *w);
/* Each add returns 0, or -1 when out of memory or a key/name is repeated (the writer then
 * refuses to write). */
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v);
int gguf_writer_add_arr(struct gguf_writer *w, const char *key, enum gguf_val elem_type,
                        const void *elems, uint64_t count); /* numeric element types */
int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *strs, uint64_t count);
/* Copies a key read by gguf_open with its exact type and value (strings, arrays too). */
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv);
/* Registers a tensor; data (nbytes of the type, borrowed until written) may be NULL when
 * the data will be streamed with gguf_writer_stream_tensor. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum gguf_type type,
                           uint32_t n_dims, const uint64_t *ne, const void *data);

/* Writes header + all tensors (every tensor must have data) to path atomically
 * (path.tmp, fsync, rename). */
int gguf_writer_write_file(struct gguf_writer *w, const char *path, char *err, size_t err_len);

/* Streaming: begin writes the header to path.tmp; stream_tensor appends the next tensor's
 * bytes in registration order; finish(commit=true) fsyncs and renames onto path, and
 * finish(commit=false) removes the temporary file. */
int gguf_writer_begin(struct gguf_writer *w, const char *path, char *err, size_t err_len);
int gguf_writer_stream_tensor(struct gguf_writer *w, const void *data, uint64_t nbytes, char *err, size_t err_len);
/* Appends the next nbytes of the current tensor; the tensor is complete (and padded) once
 * its nbytes have arrived. Lets a converter write a tensor larger than memory. */
int gguf_writer_stream_part(struct gguf_writer *w, const void *data, uint64_t nbytes, char *err, size_t err_len);
int gguf_writer_finish(struct gguf_writer *w, bool commit, char *err, size_t err_len);

#endif
