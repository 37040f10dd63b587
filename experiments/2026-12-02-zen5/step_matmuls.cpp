// One decode step's SmallMatMul calls on the bench model (8 layers of QKV, O, gate/up and down,
// then the LM head), each with its own weights (167 MB: they come from memory, not the caches),
// rows M = 1, 4, 8; the best of 20 steps. KERNELS names the kernel folder (common.h and
// small_matmul.cpp), so an older pool can be measured the same way:
//   K=../../mindformers/msllama/kernels
//   g++ -std=c++17 -O3 -march=native -fno-math-errno -pthread -I$K -DKERNEL="\"$K/small_matmul.cpp\"" \
//       step_matmuls.cpp -o /tmp/step_matmuls && /tmp/step_matmuls
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include KERNEL

struct Call {
  int64_t k, n;
  std::vector<float> w;  // packed panels of 32 columns, as the kernel takes them
};

int main() {
  std::vector<Call> calls;
  for (int layer = 0; layer < 8; ++layer) {
    for (auto [k, n] : {std::pair<int64_t, int64_t>{512, 1536}, {512, 512}, {512, 2752}, {1376, 512}}) {
      calls.push_back({k, n, {}});
    }
  }
  calls.push_back({512, 32000, {}});
  std::mt19937 g(1);
  std::uniform_real_distribution<float> u(-1, 1);
  double bytes = 0;
  for (auto &c : calls) {
    c.w.resize((c.n + 31) / 32 * c.k * 32);
    for (auto &v : c.w) v = u(g);
    bytes += 4.0 * c.w.size();
  }
  const char *dtypes[3] = {"float32", "float32", "float32"};
  int ndims[3] = {2, 3, 2};
  for (int64_t m : {1, 4, 8}) {
    std::vector<float> x(m * 1376, 0.5f), y(m * 32000);
    double best = 1e30;
    for (int step = 0; step < 20; ++step) {
      const auto t0 = std::chrono::steady_clock::now();
      for (auto &c : calls) {
        int64_t sx[2] = {m, c.k}, sw[3] = {(c.n + 31) / 32, c.k, 32}, sy[2] = {m, c.n};
        int64_t *shapes[3] = {sx, sw, sy};
        void *params[3] = {x.data(), c.w.data(), y.data()};
        SmallMatMul(3, params, ndims, shapes, dtypes, nullptr, nullptr);
      }
      best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("M=%ld: %.2f ms per step, weights read at %.1f GB/s\n", long(m), best, bytes / best / 1e6);
  }
}
