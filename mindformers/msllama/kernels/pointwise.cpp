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
// The rows' arithmetic is in rows.h. One thread: the model uses these only in graphs of a few rows
// (RuntimeConfig.fused_pointwise_rows), where starting a thread costs more than the work.
// Returns 0, or a nonzero code that MindSpore turns into an exception.
#include <cstdint>

#include "common.h"
#include "rows.h"

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
