// GFLOP/s of OpenBLAS's sgemm (the scipy-openblas32 wheel) on the bench model's linear shapes, row-major
// x [M, K] @ w [K, N]: mode 0 with OpenBLAS's own 2 threads, mode 1 single-threaded on the two
// column halves from two std::threads. Best of 3 loops of ~2 GFLOP. Build and run from this folder:
//   ../../.venv/bin/pip download scipy-openblas32==0.3.34.481.3 --no-deps -d /tmp/sob
//   (cd /tmp/sob && unzip -qo scipy_openblas32-*.whl); D=/tmp/sob/scipy_openblas32
//   g++ -O2 -std=c++17 -pthread -I.. -I$D/include openblas_bench.cpp -L$D/lib -lscipy_openblas \
//       -Wl,-rpath,$D/lib -o /tmp/openblas_bench && /tmp/openblas_bench 0 && /tmp/openblas_bench 1
#include <cstdlib>
#include <thread>

#include "cblas.h"
#include "gemm_bench.h"

// y[:, c0:c1] = x @ w[:, c0:c1] (row-major, leading dimensions K and N)
void Gemm(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n, int64_t c0, int64_t c1) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, c1 - c0, k, 1.f, x, k, w + c0, n, 0.f, y + c0, n);
}

int main(int argc, char **argv) {
  const int mode = argc > 1 ? std::atoi(argv[1]) : 0;
  scipy_openblas_set_num_threads(mode == 0 ? 2 : 1);
  PrintTable({8, 16, 32, 64, 128, 256}, [mode](int64_t m, int64_t k, int64_t n) {
    GemmInputs in(m, k, n, k * n);
    const float *x = in.x.data(), *w = in.w.data();
    float *y = in.y.data();
    return BestGflopS(m, k, n, [&] {
      if (mode == 0) return Gemm(x, w, y, m, k, n, 0, n);
      const int64_t half = (n / 2 + 15) / 16 * 16;
      std::thread other([&] { Gemm(x, w, y, m, k, n, half, n); });
      Gemm(x, w, y, m, k, n, 0, half);
      other.join();
    });
  });
}
