// Small-batch fp32 matmul for MindSpore's CPU `Custom(func_type="aot")` op: y = x @ W for the
// rows of a small decode step (RuntimeConfig.small_matmul_rows). The panel layout, the tiles and
// the threads are described in matmul.h.
//
// Inputs (MindSpore passes inputs then outputs):
//   0 x    float32 [M, K]
//   1 w    float32 [P, K, 32]   packed in column panels, P = ceil(N / 32)
//   2 y    float32 [M, N]       N <= 32 * P, taken from the output's shape
// Returns 0, or a nonzero code that MindSpore turns into an exception.
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
  PanelMatMul(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
              static_cast<float *>(params[2]), m_dim, k_dim, n_dim);
  return kOk;
}
