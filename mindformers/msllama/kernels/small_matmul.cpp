// The LM head's ops for MindSpore's CPU `Custom(func_type="aot")`, one library so that they share
// its helper thread (still polling from the matmul when the argmax starts):
//
// SmallMatMul: y = x @ W, fp32, in graphs of the panel kernel (RuntimeConfig.small_matmul_rows and
// fused_layer_rows). The panel layout, the tiles and the threads are described in matmul.h.
//   0 x    float32 [M, K]
//   1 w    float32 [P, K, 32]   packed in column panels, P = ceil(N / 32)
//   2 y    float32 [M, N]       N <= 32 * P, taken from the output's shape
// Trailing rows of x that are all zero get zero rows of y without being computed.
//
// ArgMaxRows: each row's largest logit and its index, the lowest index among equal ones, as
// ops.max(x, 1) gives them. MindSpore's CPU ArgMaxWithValue reads one row at a time at ~6 GB/s:
// 0.65 ms of a 20 ms B=32 step (experiments/2026-12-03-matmul-fetch). Here the rows are split
// between the threads and read a vector at a time. NaNs are never the largest.
//   0 x     float32 [N, V]
//   1 ids   int32 [N]
//   2 best  float32 [N]
//
// MindSpore passes inputs then outputs. Each returns 0, or a nonzero code that MindSpore turns into
// an exception.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "matmul.h"

extern "C" int SmallMatMul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return kBadArity;
  if (!AllFloat32(nparam, dtypes)) return kBadDtype;
  if (ndims[0] != 2 || ndims[1] != 3 || ndims[2] != 2) return kBadShape;
  const int64_t m_dim = shapes[0][0], k_dim = shapes[0][1], panels = shapes[1][0], n_dim = shapes[2][1];
  if (shapes[1][1] != k_dim || shapes[1][2] != kPanel || shapes[2][0] != m_dim || n_dim > panels * kPanel ||
      n_dim <= (panels - 1) * kPanel) {
    return kBadShape;
  }
  // Trailing all-zero rows (a decode bucket's padding after the layer op, decode_layer.cpp) are
  // not computed: their products are zero whatever the (finite) weights, bit for bit.
  const auto *x = static_cast<const float *>(params[0]);
  auto *y = static_cast<float *>(params[2]);
  int64_t rows = m_dim;
  while (rows > 0 && std::all_of(x + (rows - 1) * k_dim, x + rows * k_dim, [](float v) { return v == 0.0f; })) --rows;
  PanelMatMul(x, static_cast<const float *>(params[1]), y, rows, k_dim, n_dim);
  std::fill(y + rows * n_dim, y + m_dim * n_dim, 0.0f);
  return kOk;
}

namespace {

typedef int32_t VI __attribute__((vector_size(4 * kWidth)));  // lanes of V as int32

// Below this many floats per extra thread the argmax stays on the calling thread.
constexpr int64_t kArgMaxFloatsPerThread = 1 << 16;

void ArgMaxRow(const float *x, int64_t n, int32_t *index, float *value) {
  VI lane, at = {};
  for (int64_t l = 0; l < kWidth; ++l) lane[l] = static_cast<int32_t>(l);
  V top = Splat<V>(-INFINITY);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {  // each lane keeps the first index of its largest value
    const V v = Load<V>(x + i);
    const VI larger = v > top;
    top = larger ? v : top;
    at = larger ? lane + static_cast<int32_t>(i) : at;
  }
  float best = -INFINITY;
  int32_t where = 0;
  for (int64_t l = 0; l < kWidth; ++l) {
    if (top[l] > best || (top[l] == best && at[l] < where)) best = top[l], where = at[l];
  }
  for (; i < n; ++i) {
    if (x[i] > best) best = x[i], where = static_cast<int32_t>(i);
  }
  *index = where;
  *value = best;
}

}  // namespace

extern "C" int ArgMaxRows(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                          void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return kBadArity;
  if (!IsType(dtypes[0], "float32") || !IsType(dtypes[1], "int32") || !IsType(dtypes[2], "float32")) {
    return kBadDtype;
  }
  if (ndims[0] != 2 || ndims[1] != 1 || ndims[2] != 1) return kBadShape;
  const int64_t rows = shapes[0][0], n = shapes[0][1];
  if (n < 1 || shapes[1][0] != rows || shapes[2][0] != rows) return kBadShape;
  const auto *x = static_cast<const float *>(params[0]);
  auto *ids = static_cast<int32_t *>(params[1]);
  auto *best = static_cast<float *>(params[2]);
  const int64_t threads = std::min<int64_t>(KernelThreads(), 1 + rows * n / kArgMaxFloatsPerThread);
  ParallelRanges(rows, threads, [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) ArgMaxRow(x + r * n, n, ids + r, best + r);
  });
  return kOk;
}
