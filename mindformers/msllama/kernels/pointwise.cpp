// Row-wise fp32 ops of a Llama layer for MindSpore's CPU `Custom(func_type="aot")` op, each one
// call instead of the 5-7 basic ops MindSpore runs for it. On 2 cores a graph op costs ~10-15 us
// to launch whatever its size, and a decode step of the bench model launched ~350 of them, so the
// launches alone took several ms of a ~15 ms small-batch step (experiments/2026-12-01-fused-ops).
//
//   RmsNorm(x [N, H], weight [H], eps [1]) -> y [N, H]
//       y = x / sqrt(mean(x^2) + eps) * weight, the mean accumulated in fp32 along the row
//   SwiGlu(gate_up [N, 2F]) -> y [N, F]
//       y = silu(gate) * up with gate = gate_up[:, :F], up = gate_up[:, F:], silu(g) = g * sigmoid(g)
//
// Every row depends only on itself. One thread: the model uses these only in graphs of a few rows
// (RuntimeConfig.fused_pointwise_rows), where starting a thread costs more than the work.
// Returns 0, or a nonzero code that MindSpore turns into an exception.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

enum Status : int { kOk = 0, kBadArity = 1, kBadDtype = 2, kBadShape = 3 };

void NormRow(const float *x, const float *w, float eps, int64_t h, float *y) {
  F8 acc = F8{};
  int64_t i = 0;
  for (; i + 8 <= h; i += 8) {
    const F8 v = Load<F8>(x + i);
    acc += v * v;
  }
  float sum = HorizontalSum(acc);
  for (; i < h; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
  for (i = 0; i < h; ++i) y[i] = x[i] * inv * w[i];
}

// silu(g) * u with sigmoid(g) = 1 / (1 + e^-g), e^-|g| from ExpNonPositive (no overflow for any g).
void SwiGluRow(const float *g, const float *u, int64_t f, float *y) {
  int64_t i = 0;
  for (; i + 8 <= f; i += 8) {
    const F8 x = Load<F8>(g + i);
    const F8 e = ExpNonPositive(x < 0.0f ? x : -x);
    const F8 sig = x < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
    Store(y + i, x * sig * Load<F8>(u + i));
  }
  for (; i < f; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace

extern "C" int RmsNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                       void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return kBadArity;
  if (!AllFloat32(nparam, dtypes)) return kBadDtype;
  if (ndims[0] != 2 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 2) return kBadShape;
  const int64_t n = shapes[0][0], h = shapes[0][1];
  if (shapes[1][0] != h || shapes[2][0] != 1 || shapes[3][0] != n || shapes[3][1] != h) return kBadShape;
  const auto *x = static_cast<const float *>(params[0]);
  const auto *w = static_cast<const float *>(params[1]);
  const float eps = *static_cast<const float *>(params[2]);
  auto *y = static_cast<float *>(params[3]);
  for (int64_t r = 0; r < n; ++r) NormRow(x + r * h, w, eps, h, y + r * h);
  return kOk;
}

extern "C" int SwiGlu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                      void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 2) return kBadArity;
  if (!AllFloat32(nparam, dtypes)) return kBadDtype;
  if (ndims[0] != 2 || ndims[1] != 2) return kBadShape;
  const int64_t n = shapes[0][0], f = shapes[1][1];
  if (shapes[0][1] != 2 * f || shapes[1][0] != n) return kBadShape;
  const auto *gu = static_cast<const float *>(params[0]);
  auto *y = static_cast<float *>(params[1]);
  for (int64_t r = 0; r < n; ++r) SwiGluRow(gu + r * 2 * f, gu + r * 2 * f + f, f, y + r * f);
  return kOk;
}
