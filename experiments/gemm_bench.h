// Shared by the C++ matmul benchmarks under experiments/ (build them with -I this folder): random
// inputs, best-of-3 timing and the table over the bench model's linear shapes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <random>
#include <vector>

// x [M, K] and w (`w_floats`, in whatever layout the benchmark needs), standard normal, seed 1.
struct GemmInputs {
  std::vector<float> x, w, y;
  GemmInputs(int64_t m, int64_t k, int64_t n, int64_t w_floats) : x(m * k), w(w_floats), y(m * n) {
    std::mt19937 g(1);
    std::normal_distribution<float> d;
    for (auto &v : x) v = d(g);
    for (auto &v : w) v = d(g);
  }
};

// GFLOP/s of call() computing an [M, K] x [K, N] product: the best of 3 loops of ~2 GFLOP.
template <class F>
double BestGflopS(int64_t m, int64_t k, int64_t n, F call) {
  const double flop = 2.0 * m * k * n;
  const int reps = std::max(3, int(2e9 / flop));
  double best = 1e30;
  for (int t = 0; t < 3; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) call();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  return flop / best / 1e9;
}

// One row per M, one column per bench-model shape K x N, of gflops(m, k, n).
template <class F>
void PrintTable(std::initializer_list<int64_t> rows, F gflops) {
  const int64_t shapes[][2] = {{512, 1536}, {512, 512}, {512, 2752}, {1376, 512}, {512, 32000}};  // K x N
  std::printf("%6s", "M");
  for (const auto &s : shapes) std::printf(" %5ldx%-6ld", long(s[0]), long(s[1]));
  std::printf("\n");
  for (const int64_t m : rows) {
    std::printf("%6ld", long(m));
    for (const auto &s : shapes) std::printf(" %12.1f", gflops(m, s[0], s[1]));
    std::printf("\n");
    std::fflush(stdout);
  }
}
