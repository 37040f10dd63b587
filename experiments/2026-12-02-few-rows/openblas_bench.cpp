// GFLOP/s of OpenBLAS's sgemm (the scipy-openblas32 wheel) on the bench model's linear shapes, row-major
// x [M, K] @ w [K, N]: mode 0 with OpenBLAS's own 2 threads, mode 1 single-threaded on the two
// column halves from two std::threads. Best of 3 loops of ~2 GFLOP. Build and run from this folder:
//   ../../.venv/bin/pip download scipy-openblas32==0.3.34.481.3 --no-deps -d /tmp/sob
//   (cd /tmp/sob && unzip -qo scipy_openblas32-*.whl); D=/tmp/sob/scipy_openblas32
//   g++ -O2 -std=c++17 -pthread -I$D/include openblas_bench.cpp -L$D/lib -lscipy_openblas \
//       -Wl,-rpath,$D/lib -o /tmp/openblas_bench && /tmp/openblas_bench 0 && /tmp/openblas_bench 1
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "cblas.h"

// y[:, c0:c1] = x @ w[:, c0:c1] (row-major, leading dimensions K and N)
void Gemm(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n, int64_t c0, int64_t c1) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, c1 - c0, k, 1.f, x, k, w + c0, n, 0.f, y + c0, n);
}

double GflopS(int64_t m, int64_t k, int64_t n, int mode) {
  std::vector<float> x(m * k), w(k * n), y(m * n);
  std::mt19937 g(1);
  std::normal_distribution<float> d;
  for (auto &v : x) v = d(g);
  for (auto &v : w) v = d(g);
  auto call = [&] {
    if (mode == 0) return Gemm(x.data(), w.data(), y.data(), m, k, n, 0, n);
    const int64_t half = (n / 2 + 15) / 16 * 16;
    std::thread other([&] { Gemm(x.data(), w.data(), y.data(), m, k, n, half, n); });
    Gemm(x.data(), w.data(), y.data(), m, k, n, 0, half);
    other.join();
  };
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

int main(int argc, char **argv) {
  const int mode = argc > 1 ? std::atoi(argv[1]) : 0;
  scipy_openblas_set_num_threads(mode == 0 ? 2 : 1);
  const int64_t shapes[][2] = {{512, 1536}, {512, 512}, {512, 2752}, {1376, 512}, {512, 32000}};  // K x N
  std::printf("%6s", "M");
  for (const auto &s : shapes) std::printf(" %5ldx%-6ld", long(s[0]), long(s[1]));
  std::printf("\n");
  for (const int64_t m : {8, 16, 32, 64, 128, 256}) {
    std::printf("%6ld", long(m));
    for (const auto &s : shapes) std::printf(" %12.1f", GflopS(m, s[0], s[1], mode));
    std::printf("\n");
    std::fflush(stdout);
  }
}
