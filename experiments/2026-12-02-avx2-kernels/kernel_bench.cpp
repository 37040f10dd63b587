// GFLOP/s of the SmallMatMul entry point alone (no MindSpore) on the bench model's linear shapes,
// best of 3 timed loops of ~2 GFLOP each; MSLLAMA_KERNEL_THREADS sets the threads (default: CPUs).
// KERNEL names the kernel source to include, so an older version can be measured the same way:
//   K=../../mindformers/msllama/kernels
//   g++ -std=c++17 -O3 -march=native -fno-math-errno -pthread -I.. -I$K -DKERNEL="\"$K/small_matmul.cpp\"" \
//       kernel_bench.cpp -o /tmp/kernel_bench && /tmp/kernel_bench
//   git show e83fa7b:mindformers/msllama/kernels/small_matmul.cpp > /tmp/small_matmul_e83fa7b.cpp
//   g++ ... -DKERNEL='"/tmp/small_matmul_e83fa7b.cpp"' kernel_bench.cpp -o /tmp/kernel_bench_old
#include "gemm_bench.h"

#include KERNEL

double GflopS(int64_t m, int64_t k, int64_t n) {
  const int64_t panels = (n + 31) / 32;
  GemmInputs in(m, k, n, panels * k * 32);
  int64_t sx[2] = {m, k}, sw[3] = {panels, k, 32}, sy[2] = {m, n};
  int64_t *shapes[3] = {sx, sw, sy};
  int ndims[3] = {2, 3, 2};
  const char *dtypes[3] = {"float32", "float32", "float32"};
  void *params[3] = {in.x.data(), in.w.data(), in.y.data()};
  return BestGflopS(m, k, n, [&] { SmallMatMul(3, params, ndims, shapes, dtypes, nullptr, nullptr); });
}

int main() { PrintTable({1, 2, 4, 6, 8, 16, 32, 64, 128, 256}, GflopS); }
