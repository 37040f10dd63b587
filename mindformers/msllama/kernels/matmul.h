// fp32 matmul y = x @ W over a weight packed in column panels, shared by the small-batch matmul
// op (small_matmul.cpp) and the whole decode layer (decode_layer.cpp).
//
// W arrives packed in column panels of 32: panel p holds W[:, 32p : 32p + 32] as K consecutive
// rows of 32 floats, [ceil(N / 32), K, 32] (zero columns past N), so every panel is one
// sequential read. MindSpore's CPU MatMul reads an unpacked [K, N] weight at 6-9 GB/s for 4-16
// rows on this machine; panels read at 16-22 GB/s (experiments/2026-12-01-decode-kernels).
// Tiles are R rows x NV column vectors (8 floats with AVX2, 16 with AVX-512), sized to keep their
// accumulators in the CPU's 16 or 32 vector registers. Up to 8 rows, tiles span whole panels, so
// each reads its panels front to back; where the registers cannot hold all the rows for a whole
// panel (AVX2: more than 3 rows), the rows go in several tiles over the same panels, back to back,
// and the later tiles find them in L2 (experiments/2026-12-02-few-rows). More rows are computed in
// tiles of 6 rows x 2 (AVX2) or 4 (AVX-512) vectors, near the CPU's peak FMA rate
// (experiments/2026-12-01-matmul-tiles and experiments/2026-12-02-avx2-kernels); while they
// compute one group of columns, they prefetch the panels of the next (NextGroup).
//
// Each output element is one fp32 sum over k in order 0..K-1, whatever M, the thread or the
// column split (the multiply-adds are explicit FMAs, MulAdd in common.h): a row's result does not
// depend on the other rows of the batch.
// Threads: the calling thread and the library's helpers (one per extra CPU: KernelThreads and
// HelperPool in common.h), each taking chunks of a contiguous range of column groups (kGroup
// vectors) and, once done with it, chunks of the others' (StealingRanges).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

// Vector width and register count of the CPU the library is built for (-march=native): tiles are
// sized so that their accumulators stay in registers (spilled tiles run ~10x slower).
#if defined(__AVX512F__)
constexpr int64_t kWidth = 16, kRegisters = 32;
#else
constexpr int64_t kWidth = 8, kRegisters = 16;
#endif
typedef float V __attribute__((vector_size(4 * kWidth)));

constexpr int64_t kPanel = 32;
constexpr int64_t kPanelVectors = kPanel / kWidth;
constexpr int64_t kGroup = 4;        // vectors per thread work unit (1 or 2 panels): the widest tile
constexpr int64_t kTileRows = 6;     // many-row tiles: 6 rows x kTileVectors accumulators
constexpr int64_t kTileVectors = kRegisters == 32 ? 4 : 2;
constexpr int64_t kChunkRows = 96;   // rows whose x (<= 528 KB at K = 1376) stays in L2 across tiles
constexpr int64_t kFewRows = 8;      // up to this many rows the step is bound by reading W
constexpr int64_t kAccumulators = kRegisters == 32 ? 16 : 12;  // leaves registers for the loads of W
constexpr int64_t kFewTileRows = kAccumulators / kPanelVectors;  // rows of a one-panel tile: 3 or 8

// Vectors per tile of R <= kFewTileRows rows: a group (kGroup vectors) if its accumulators fit,
// else one panel.
constexpr int64_t FewRowsVectors(int64_t r) { return r * kGroup <= kAccumulators ? kGroup : kPanelVectors; }

// Cache lines to prefetch while a tile computes: the lines [next, end), about `per_k` bytes
// of them per step of k, so that the stream keeps pace with the tile instead of flooding the
// memory queues. An empty stream (next == end) fetches nothing.
struct Fetch {
  const char *next = nullptr, *end = nullptr;
  int64_t per_k = 0;
};

// Prefetches the lines of f due by step k of a tile's k loop; `start` is where f began.
inline void FetchUpTo(Fetch &f, const char *start, int64_t k) {
  const char *until = std::min(f.end, start + (k + 1) * f.per_k);
  for (; f.next < until; f.next += 64) __builtin_prefetch(f.next, 0, 3);
}

// Memory another kernel reads right after this matmul (the layer's attention reads the K/V
// blocks of each row), as `count` pieces of `bytes` each. The many-row tiles take one piece each
// and prefetch it beside their own weights: they are bound by arithmetic and leave the memory
// bus mostly idle, so the first pieces wait in cache for the reader.
struct SideReads {
  const char *const *pieces = nullptr;
  int64_t count = 0, bytes = 0;
  std::atomic<int64_t> taken{0};

  Fetch Take(int64_t k_dim) {
    if (taken.load(std::memory_order_relaxed) >= count) return {};
    const int64_t i = taken.fetch_add(1, std::memory_order_relaxed);
    if (i >= count) return {};
    return {pieces[i], pieces[i] + bytes, (bytes + k_dim - 1) / k_dim};
  }
};

// Share t of `tiles` of the weight data that the column group after [v, v + vectors) reads: the
// next panels, or, for groups narrower than a panel, the same columns of the next panel; nothing
// if those columns are past v1 (where this thread probably stops). Prefetched while this group
// computes, they arrive from memory by the time the next group starts: with many rows a tile is
// bound by arithmetic, and without this the first tile of every group waited for its panels, so a
// step took the weights' read time plus the arithmetic (experiments/2026-12-03-matmul-fetch).
inline Fetch NextGroup(const float *w, int64_t k_dim, int64_t v, int64_t vectors, int64_t v1, int64_t t,
                       int64_t tiles) {
  const int64_t c = v * kWidth, columns = vectors * kWidth, next_panel = (c + std::max(columns, kPanel)) / kPanel;
  if (next_panel * kPanel >= v1 * kWidth) return {};
  const char *next = reinterpret_cast<const char *>(w + (next_panel * kPanel + c % kPanel) * k_dim);
  const int64_t bytes = int64_t{sizeof(float)} * columns * k_dim, share = (bytes + tiles - 1) / tiles;
  return {next + std::min(bytes, t * share), next + std::min(bytes, (t + 1) * share), (share + k_dim - 1) / k_dim};
}

// Rows [0, R) of x against column vectors [v, v + NV) of W (columns kWidth v ..), clipped to n_dim;
// with kFetch, prefetching `fetch` on the way.
template <int64_t R, int64_t NV, bool kFetch = false>
void Tile(const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t v, Fetch fetch = {},
          Fetch side = {}) {
  const float *column[NV];
  for (int64_t j = 0; j < NV; ++j) {
    const int64_t c = (v + j) * kWidth;  // a vector never crosses a panel: kWidth divides kPanel
    column[j] = w + (c / kPanel) * k_dim * kPanel + c % kPanel;
  }
  const char *const fetch_start = fetch.next, *const side_start = side.next;
  V acc[R][NV] = {};
  for (int64_t k = 0; k < k_dim; ++k) {
    if constexpr (kFetch) {
      FetchUpTo(fetch, fetch_start, k);
      FetchUpTo(side, side_start, k);
    }
    V b[NV];
    for (int64_t j = 0; j < NV; ++j) b[j] = Load<V>(column[j] + k * kPanel);
    for (int64_t r = 0; r < R; ++r) {
      const V xv = Splat<V>(x[r * k_dim + k]);
      for (int64_t j = 0; j < NV; ++j) acc[r][j] = MulAdd(xv, b[j], acc[r][j]);
    }
  }
  const int64_t c0 = v * kWidth, cols = std::min(NV * kWidth, n_dim - c0);
  for (int64_t r = 0; r < R; ++r) {
    float out[NV * kWidth];
    for (int64_t j = 0; j < NV; ++j) Store(out + kWidth * j, acc[r][j]);
    std::memcpy(y + r * n_dim + c0, out, sizeof(float) * cols);
  }
}

// Vectors [v0, v1) in tiles of NV, the rest one vector at a time; with kFetch, the first tile
// prefetches `fetch` and `side`.
template <int64_t R, int64_t NV, bool kFetch = false>
void Sweep(const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t v0, int64_t v1,
           Fetch fetch = {}, Fetch side = {}) {
  int64_t v = v0;
  for (; v + NV <= v1; v += NV, fetch = {}, side = {}) Tile<R, NV, kFetch>(x, w, y, k_dim, n_dim, v, fetch, side);
  for (; v < v1; ++v) Tile<R, 1>(x, w, y, k_dim, n_dim, v);
}

// `rows` (1..kMaxRows) as a template argument; NV < 0 picks FewRowsVectors(rows). Larger tiles
// would not fit the registers, so they are not even compiled. A non-empty `fetch` goes to the
// first tile.
template <int64_t NV, int64_t kMaxRows>
void SweepRows(int64_t rows, const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t v0,
               int64_t v1, Fetch fetch = {}) {
  switch (rows) {
#define MSLLAMA_ROWS(r)                                                                              \
  case r:                                                                                            \
    if constexpr (r <= kMaxRows) {                                                                   \
      constexpr int64_t kVectors = NV < 0 ? FewRowsVectors(r) : NV;                                  \
      if (fetch.next < fetch.end) return Sweep<r, kVectors, true>(x, w, y, k_dim, n_dim, v0, v1, fetch); \
      return Sweep<r, kVectors>(x, w, y, k_dim, n_dim, v0, v1);                                      \
    }                                                                                                \
    break;
    MSLLAMA_ROWS(1) MSLLAMA_ROWS(2) MSLLAMA_ROWS(3) MSLLAMA_ROWS(4)
    MSLLAMA_ROWS(5) MSLLAMA_ROWS(6) MSLLAMA_ROWS(7) MSLLAMA_ROWS(8)
#undef MSLLAMA_ROWS
  }
}

// Column vectors [v0, v1) for every row. Up to kFewRows rows: group after group of columns, the
// rows in as few tiles of at most kFewTileRows rows as they need, so a group's panels come from
// memory once, read front to back. More rows go in chunks of kChunkRows, each swept over the
// columns kTileVectors at a time with tiles of kTileRows rows (bound by arithmetic: ~95 % of the
// peak FMA rate on an AVX-512 CPU); their prefetch runs on up to vector v_ahead, and each also
// prefetches a piece of `side` while there are any.
void Columns(const float *x, const float *w, float *y, int64_t m_dim, int64_t k_dim, int64_t n_dim, int64_t v0,
             int64_t v1, int64_t v_ahead, SideReads *side) {
  if (m_dim <= kFewRows) {
    const int64_t tiles = (m_dim + kFewTileRows - 1) / kFewTileRows;
    for (int64_t v = v0; v < v1; v += kGroup) {
      const int64_t v_end = std::min(v1, v + kGroup);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = m_dim * t / tiles, r1 = m_dim * (t + 1) / tiles;
        // The first tile reads the group's panels from memory and the later ones find them in L2;
        // meanwhile they prefetch the next group's, half each (AVX2, 7-8 rows: 1.09-1.24x). A lone
        // later tile (4-6 rows) takes only the first half: fetching the whole panel made it slower
        // (0.84-0.94x), half gained 1.03-1.11x (experiments/2026-12-04-few-row-fetch).
        const Fetch fetch =
            t == 0 ? Fetch{} : NextGroup(w, k_dim, v, kGroup, v_ahead, t - 1, std::max<int64_t>(2, tiles - 1));
        SweepRows<-1, kFewTileRows>(r1 - r0, x + r0 * k_dim, w, y + r0 * n_dim, k_dim, n_dim, v, v_end, fetch);
      }
    }
    return;
  }
  for (int64_t m0 = 0; m0 < m_dim; m0 += kChunkRows) {
    const int64_t m1 = std::min(m_dim, m0 + kChunkRows);
    const int64_t tiles = (m1 - m0) / kTileRows;
    for (int64_t v = v0; v < v1; v += kTileVectors) {
      const int64_t v_end = std::min(v1, v + kTileVectors);
      int64_t m = m0;
      for (int64_t t = 0; m + kTileRows <= m1; m += kTileRows, ++t) {
        const Fetch fetch = NextGroup(w, k_dim, v, kTileVectors, v_ahead, t, tiles);
        Sweep<kTileRows, kTileVectors, true>(x + m * k_dim, w, y + m * n_dim, k_dim, n_dim, v, v_end, fetch,
                                             side ? side->Take(k_dim) : Fetch{});
      }
      if (m < m1) {
        SweepRows<kTileVectors, kTileRows - 1>(m1 - m, x + m * k_dim, w, y + m * n_dim, k_dim, n_dim, v, v_end);
      }
    }
  }
}

// y [M, N] = x [M, K] @ W, W packed in `panels` column panels of 32 ([ceil(N / 32), K, 32]), on
// the calling thread and the helpers, which share the column groups (StealingRanges); with
// `side`, prefetching it on the way (more than kFewRows rows only).
inline void PanelMatMul(const float *x, const float *w, float *y, int64_t m_dim, int64_t k_dim, int64_t n_dim,
                        SideReads *side = nullptr) {
  const int64_t vectors = (n_dim + kWidth - 1) / kWidth;  // padding columns past N are not computed
  StealingRanges((vectors + kGroup - 1) / kGroup, KernelThreads(), [=](int64_t g0, int64_t g1, int64_t ahead) {
    Columns(x, w, y, m_dim, k_dim, n_dim, kGroup * g0, std::min(kGroup * g1, vectors),
            std::min(kGroup * ahead, vectors), side);
  });
}

}  // namespace
