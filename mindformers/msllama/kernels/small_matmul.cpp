// Small-batch fp32 matmul for MindSpore's CPU `Custom(func_type="aot")` op: y = x @ W for the few
// rows of a small decode step, where the step is bound by reading W once, not by arithmetic.
//
// W arrives packed in column panels of 32: panel p holds W[:, 32p : 32p + 32] as K consecutive
// rows of 32 floats, [ceil(N / 32), K, 32] (zero columns past N), so every panel is one
// sequential read. MindSpore's CPU MatMul reads an unpacked [K, N] weight at 6-9 GB/s for 4-16
// rows on this machine; panels read at 16-22 GB/s (experiments/2026-12-01-decode-kernels).
//
// Inputs (MindSpore passes inputs then outputs):
//   0 x    float32 [M, K]
//   1 w    float32 [P, K, 32]   packed as above, P = ceil(N / 32)
//   2 y    float32 [M, N]       N <= 32 * P, taken from the output's shape
// Returns 0, or a nonzero code that MindSpore turns into an exception.
//
// Each output element is one fp32 sum over k in order 0..K-1, whatever M, the thread or the
// panel split: a row's result does not depend on the other rows of the batch.
// Threads: the calling thread and one helper per extra CPU (KernelThreads in common.h), each taking
// a contiguous range of panels, joined before returning.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

enum Status : int { kOk = 0, kBadArity = 1, kBadDtype = 2, kBadShape = 3 };

constexpr int64_t kPanel = 32;
constexpr int64_t kRowBlock = 4;  // rows sharing each loaded panel row: 4 x 2 vector accumulators

typedef float F16 __attribute__((vector_size(64)));

// Rows [0, R) of x against one panel; writes the panel's `cols` (<= 32) output columns.
template <int64_t R>
void PanelRows(const float *x, const float *panel, float *y, int64_t k_dim, int64_t n_dim, int64_t cols) {
  F16 acc[R][2] = {};
  for (int64_t k = 0; k < k_dim; ++k) {
    const F16 lo = Load<F16>(panel + k * kPanel), hi = Load<F16>(panel + k * kPanel + 16);
    for (int64_t r = 0; r < R; ++r) {
      const F16 xv = F16{} + x[r * k_dim + k];
      acc[r][0] += xv * lo;
      acc[r][1] += xv * hi;
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    float out[kPanel];
    Store(out, acc[r][0]);
    Store(out + 16, acc[r][1]);
    std::memcpy(y + r * n_dim, out, sizeof(float) * cols);
  }
}

// Panels [p0, p1): every row of x against each panel, kRowBlock rows at a time (the panel stays
// in cache between row blocks).
void Panels(const float *x, const float *w, float *y, int64_t m_dim, int64_t k_dim, int64_t n_dim, int64_t p0,
            int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float *panel = w + p * k_dim * kPanel;
    const int64_t n0 = p * kPanel, cols = std::min(kPanel, n_dim - n0);
    int64_t m = 0;
    for (; m + kRowBlock <= m_dim; m += kRowBlock) {
      PanelRows<kRowBlock>(x + m * k_dim, panel, y + m * n_dim + n0, k_dim, n_dim, cols);
    }
    for (; m < m_dim; ++m) PanelRows<1>(x + m * k_dim, panel, y + m * n_dim + n0, k_dim, n_dim, cols);
  }
}

}  // namespace

extern "C" int SmallMatMul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return kBadArity;
  for (int i = 0; i < 3; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return kBadDtype;
  }
  if (ndims[0] != 2 || ndims[1] != 3 || ndims[2] != 2) return kBadShape;
  const int64_t m_dim = shapes[0][0], k_dim = shapes[0][1], panels = shapes[1][0], n_dim = shapes[2][1];
  if (shapes[1][1] != k_dim || shapes[1][2] != kPanel || shapes[2][0] != m_dim || n_dim > panels * kPanel ||
      n_dim <= (panels - 1) * kPanel) {
    return kBadShape;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *w = static_cast<const float *>(params[1]);
  auto *y = static_cast<float *>(params[2]);
  ParallelRanges(panels, KernelThreads(),
                 [=](int64_t p0, int64_t p1) { Panels(x, w, y, m_dim, k_dim, n_dim, p0, p1); });
  return kOk;
}
