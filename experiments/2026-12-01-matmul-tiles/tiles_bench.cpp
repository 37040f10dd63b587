// Tile shapes for the panel-packed matmul of ../../mindformers/msllama/kernels/small_matmul.cpp,
// measured alone (no MindSpore): GFLOP/s of y = x @ W on 2 threads for the bench model's linear
// shapes, R rows x NP panels of 32 columns per tile, optionally in chunks of C rows.
//   g++ -std=c++17 -O3 -march=native -fno-math-errno -pthread \
//       -I../../mindformers/msllama/kernels tiles_bench.cpp -o /tmp/tiles_bench && /tmp/tiles_bench
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "common.h"

typedef float F16 __attribute__((vector_size(64)));
constexpr int64_t kPanel = 32;

template <int R, int NP>
void Tile(const float *x, const float *w, float *y, int64_t k_dim, int64_t n_dim, int64_t p) {
  F16 acc[R][2 * NP] = {};
  for (int64_t k = 0; k < k_dim; ++k) {
    F16 b[2 * NP];
    for (int j = 0; j < 2 * NP; ++j) b[j] = Load<F16>(w + (p + j / 2) * k_dim * kPanel + k * kPanel + 16 * (j % 2));
    for (int r = 0; r < R; ++r) {
      const F16 xv = F16{} + x[r * k_dim + k];
      for (int j = 0; j < 2 * NP; ++j) acc[r][j] += xv * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 2 * NP; ++j) Store(y + r * n_dim + p * kPanel + 16 * j, acc[r][j]);
}

// Whole tiles only: M a multiple of R (and of the chunk), N a multiple of 32 NP.
template <int R, int NP>
double GflopS(int64_t m_dim, int64_t k_dim, int64_t n_dim, int64_t chunk) {
  std::vector<float> x(m_dim * k_dim), w(k_dim * n_dim), y(m_dim * n_dim);
  std::mt19937 g(1);
  std::normal_distribution<float> d;
  for (auto &v : x) v = d(g);
  for (auto &v : w) v = d(g);
  const int64_t groups = n_dim / kPanel / NP;
  auto run = [&] {
    ParallelRanges(groups, 2, [&](int64_t g0, int64_t g1) {
      for (int64_t m0 = 0; m0 < m_dim; m0 += chunk)
        for (int64_t q = g0; q < g1; ++q)
          for (int64_t m = m0; m + R <= std::min(m_dim, m0 + chunk); m += R)
            Tile<R, NP>(x.data() + m * k_dim, w.data(), y.data() + m * n_dim, k_dim, n_dim, q * NP);
    });
  };
  run();
  std::vector<double> ts;
  for (int i = 0; i < 30; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return 2.0 * m_dim * k_dim * n_dim / ts[ts.size() / 2] / 1e9;
}

int main() {
  const int64_t shapes[][2] = {{512, 1536}, {512, 512}, {512, 2752}, {1376, 512}, {512, 32000}};
  printf("GFLOP/s (median of 30), tiles rows x columns\n");
  for (int64_t m : {96, 192, 288, 576}) {
    for (const auto &s : shapes) {
      printf("M=%ld K=%ld N=%ld: 8x32 %.0f  12x32 %.0f  6x64 %.0f  6x64 in chunks of 96 %.0f\n", m, s[0], s[1],
             GflopS<8, 1>(m, s[0], s[1], m), GflopS<12, 1>(m, s[0], s[1], m), GflopS<6, 2>(m, s[0], s[1], m),
             GflopS<6, 2>(m, s[0], s[1], 96));
      fflush(stdout);
    }
  }
}
