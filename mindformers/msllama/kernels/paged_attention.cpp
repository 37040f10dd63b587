// Paged decode attention for MindSpore's CPU `Custom(func_type="aot")` op (the algorithm, the
// cache layout and the threads: attention.h).
//
// Inputs (MindSpore passes inputs then outputs):
//   0 qkv          float32 [B, (KVH * G + 2 * KVH) * D]   G query heads share one KV head (GQA)
//   1 kv_cache     float32 [NB * 2 * KVH * BS, D], written in place (the step's new rows)
//   2 rope_cos     float32 [S, D]           rotary tables (rotate-half layout), S positions
//   3 rope_sin     float32 [S, D]
//   4 block_tables int32   [B, M]           physical blocks of each row's sequence, in order
//   5 context_lens int32   [B]              tokens of the sequence up to this row, in [1, min(M * BS, S)]
//   6 out          float32 [B, KVH, G, D]
// Returns 0, or a nonzero code that MindSpore turns into an exception (Status in common.h).
#include <cstdint>

#include "attention.h"
#include "common.h"

namespace {

int CheckArgs(int nparam, int *ndims, int64_t **shapes, const char **dtypes, Dims *m) {
  if (nparam != 7) return kBadArity;
  for (int i : {0, 1, 2, 3, 6}) {
    if (!IsType(dtypes[i], "float32")) return kBadDtype;
  }
  if (!IsType(dtypes[4], "int32") || !IsType(dtypes[5], "int32")) return kBadDtype;
  const int want_ndims[7] = {2, 2, 2, 2, 2, 1, 4};
  for (int i = 0; i < 7; ++i) {
    if (ndims[i] != want_ndims[i]) return kBadShape;
  }
  const int64_t *o = shapes[6];
  *m = Dims{o[0], o[1], o[2], o[3], 0, 0, shapes[4][1], shapes[2][0]};
  if (!m->heads_valid()) return kBadShape;
  if (shapes[0][0] != m->batch || shapes[0][1] != m->qkv_floats() || shapes[1][1] != m->head_dim) return kBadShape;
  for (int i : {2, 3}) {
    if (shapes[i][0] != m->positions || shapes[i][1] != m->head_dim) return kBadShape;
  }
  if (shapes[4][0] != m->batch || shapes[5][0] != m->batch || m->width <= 0) return kBadShape;
  return kOk;
}

int PagedDecodeAttentionImpl(int64_t block_size, int nparam, void **params, int *ndims, int64_t **shapes,
                             const char **dtypes) {
  Dims m{};
  const int status = CheckArgs(nparam, ndims, shapes, dtypes, &m);
  if (status != kOk) return status;
  if (!m.set_cache(shapes[1][0], block_size)) return kBadShape;
  return PagedAttention(m, static_cast<const float *>(params[0]), static_cast<float *>(params[1]),
                        static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                        static_cast<const int32_t *>(params[4]), static_cast<const int32_t *>(params[5]),
                        static_cast<float *>(params[6]));
}

}  // namespace

#define MSLLAMA_PAGED_ATTENTION(BS)                                                                      \
  extern "C" int PagedDecodeAttentionBS##BS(int nparam, void **params, int *ndims, int64_t **shapes,  \
                                             const char **dtypes, void *stream, void *extra) {         \
    (void)stream;                                                                                      \
    (void)extra;                                                                                       \
    return PagedDecodeAttentionImpl(BS, nparam, params, ndims, shapes, dtypes);                        \
  }
MSLLAMA_FOR_BLOCK_SIZES(MSLLAMA_PAGED_ATTENTION)
