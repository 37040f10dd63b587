// Small-batch fp32 matmul for MindSpore's CPU `Custom(func_type="aot")` op: y = x @ W for the
// rows of a small decode step (RuntimeConfig.small_matmul_rows).
//
// W arrives packed in column panels of 32: panel p holds W[:, 32p : 32p + 32] as K consecutive
// rows of 32 floats, [ceil(N / 32), K, 32] (zero columns past N), so every panel is one
// sequential read. MindSpore's CPU MatMul reads an unpacked [K, N] weight at 6-9 GB/s for 4-16
// rows on this machine; panels read at 16-22 GB/s (experiments/2026-12-01-decode-kernels).
// Up to 8 rows make one tile per panel, so W is read once. More rows are computed in tiles of
// 6 rows x 2 panels, which run near the CPU's peak FMA rate (190-210 GFLOP/s on 2 cores in a C++
// bench, experiments/2026-12-01-matmul-tiles).
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
// a contiguous range of panel pairs, joined before returning.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

enum Status : int { kOk = 0, kBadArity = 1, kBadDtype = 2, kBadShape = 3 };

constexpr int64_t kPanel = 32;
constexpr int64_t kTileRows = 6;     // rows x 2 panels = 6 x 4 vector accumulators: 24 of the 32 registers
constexpr int64_t kChunkRows = 96;   // rows whose x (<= 528 KB at K = 1376) stays in L2 across panels
constexpr int64_t kOneTileRows = 8;  // up to this many rows go in one tile: W is read once

typedef float F16 __attribute__((vector_size(64)));

// Rows [0, R) of x against panels [p, p + NP): y[r, 32p : 32(p + NP)], clipped to n_dim columns.
template <int64_t R, int64_t NP>
void Tile(const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t p) {
  F16 acc[R][2 * NP] = {};
  const float *panel = w + p * k_dim * kPanel;
  for (int64_t k = 0; k < k_dim; ++k) {
    F16 b[2 * NP];
    for (int64_t j = 0; j < 2 * NP; ++j) b[j] = Load<F16>(panel + (j / 2) * k_dim * kPanel + k * kPanel + 16 * (j % 2));
    for (int64_t r = 0; r < R; ++r) {
      const F16 xv = F16{} + x[r * k_dim + k];
      for (int64_t j = 0; j < 2 * NP; ++j) acc[r][j] += xv * b[j];
    }
  }
  const int64_t cols = std::min(NP * kPanel, n_dim - p * kPanel);
  for (int64_t r = 0; r < R; ++r) {
    float out[NP * kPanel];
    for (int64_t j = 0; j < 2 * NP; ++j) Store(out + 16 * j, acc[r][j]);
    std::memcpy(y + r * n_dim + p * kPanel, out, sizeof(float) * cols);
  }
}

// R (<= kOneTileRows) as a template argument.
template <int64_t NP>
void TileOf(int64_t rows, const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t p) {
  switch (rows) {
    case 1: return Tile<1, NP>(x, w, y, k_dim, n_dim, p);
    case 2: return Tile<2, NP>(x, w, y, k_dim, n_dim, p);
    case 3: return Tile<3, NP>(x, w, y, k_dim, n_dim, p);
    case 4: return Tile<4, NP>(x, w, y, k_dim, n_dim, p);
    case 5: return Tile<5, NP>(x, w, y, k_dim, n_dim, p);
    case 6: return Tile<6, NP>(x, w, y, k_dim, n_dim, p);
    case 7: return Tile<7, NP>(x, w, y, k_dim, n_dim, p);
    default: return Tile<8, NP>(x, w, y, k_dim, n_dim, p);
  }
}

// Panels [p0, p1) for every row. Up to kOneTileRows rows are one tile per panel (the step is bound
// by reading W). More rows go in chunks of kChunkRows, each swept over the panels in pairs with
// tiles of kTileRows rows (bound by arithmetic: ~95 % of this CPU's peak FMA rate).
void Panels(const float *x, const float *w, float *y, int64_t m_dim, int64_t k_dim, int64_t n_dim, int64_t p0,
            int64_t p1) {
  if (m_dim <= kOneTileRows) {
    for (int64_t p = p0; p < p1; ++p) TileOf<1>(m_dim, x, w, y, k_dim, n_dim, p);
    return;
  }
  for (int64_t m0 = 0; m0 < m_dim; m0 += kChunkRows) {
    const int64_t m1 = std::min(m_dim, m0 + kChunkRows);
    int64_t p = p0;
    for (; p + 2 <= p1; p += 2) {
      int64_t m = m0;
      for (; m + kTileRows <= m1; m += kTileRows) Tile<kTileRows, 2>(x + m * k_dim, w, y + m * n_dim, k_dim, n_dim, p);
      if (m < m1) TileOf<2>(m1 - m, x + m * k_dim, w, y + m * n_dim, k_dim, n_dim, p);
    }
    if (p < p1) {
      for (int64_t m = m0; m < m1; m += kTileRows) {
        TileOf<1>(std::min(kTileRows, m1 - m), x + m * k_dim, w, y + m * n_dim, k_dim, n_dim, p);
      }
    }
  }
}

}  // namespace

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
  const auto *x = static_cast<const float *>(params[0]);
  const auto *w = static_cast<const float *>(params[1]);
  auto *y = static_cast<float *>(params[2]);
  ParallelRanges((panels + 1) / 2, KernelThreads(), [=](int64_t q0, int64_t q1) {
    Panels(x, w, y, m_dim, k_dim, n_dim, 2 * q0, std::min(2 * q1, panels));
  });
  return kOk;
}
