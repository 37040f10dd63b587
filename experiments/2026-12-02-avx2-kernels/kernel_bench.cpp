// GFLOP/s of the SmallMatMul entry point alone (no MindSpore) on the bench model's linear shapes,
// best of 3 timed loops of ~2 GFLOP each; MSLLAMA_KERNEL_THREADS sets the threads (default: CPUs).
// KERNEL names the kernel source to include, so an older version can be measured the same way:
//   K=../../mindformers/msllama/kernels
//   g++ -std=c++17 -O3 -march=native -fno-math-errno -pthread -I$K -DKERNEL="\"$K/small_matmul.cpp\"" \
//       kernel_bench.cpp -o /tmp/kernel_bench && /tmp/kernel_bench
//   git show e83fa7b:mindformers/msllama/kernels/small_matmul.cpp > /tmp/small_matmul_e83fa7b.cpp
//   g++ ... -DKERNEL='"/tmp/small_matmul_e83fa7b.cpp"' kernel_bench.cpp -o /tmp/kernel_bench_old
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include KERNEL

double GflopS(int64_t m, int64_t k, int64_t n) {
  const int64_t panels = (n + 31) / 32;
  std::vector<float> x(m * k), w(panels * k * 32), y(m * n);
  std::mt19937 g(1);
  std::normal_distribution<float> d;
  for (auto &v : x) v = d(g);
  for (auto &v : w) v = d(g);
  int64_t sx[2] = {m, k}, sw[3] = {panels, k, 32}, sy[2] = {m, n};
  int64_t *shapes[3] = {sx, sw, sy};
  int ndims[3] = {2, 3, 2};
  const char *dtypes[3] = {"float32", "float32", "float32"};
  void *params[3] = {x.data(), w.data(), y.data()};
  const double flop = 2.0 * m * k * n;
  const int reps = std::max(3, int(2e9 / flop));
  double best = 1e30;
  for (int t = 0; t < 3; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) SmallMatMul(3, params, ndims, shapes, dtypes, nullptr, nullptr);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  return flop / best / 1e9;
}

int main() {
  const int64_t shapes[][2] = {{512, 1536}, {512, 512}, {512, 2752}, {1376, 512}, {512, 32000}};  // K x N
  std::printf("%6s", "M");
  for (const auto &s : shapes) std::printf(" %5ldx%-6ld", long(s[0]), long(s[1]));
  std::printf("\n");
  for (const int64_t m : {1, 2, 4, 6, 8, 16, 32, 64, 128, 256}) {
    std::printf("%6ld", long(m));
    for (const auto &s : shapes) std::printf(" %12.1f", GflopS(m, s[0], s[1]));
    std::printf("\n");
    std::fflush(stdout);
  }
}
