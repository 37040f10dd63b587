// A 2-thread panel matmul call (kernels/matmul.h) with fixed shares against shared ones, alternated
// call by call in one process: how long the faster thread waits for the slower one with fixed
// shares, and what the call takes both ways. Weights cycle through 8 copies so they come from memory.
//   g++ -O3 -march=native -std=c++17 -pthread -Imindformers/msllama/kernels \
//       experiments/2026-12-04-stealing/share_gap.cpp -o /tmp/share_gap
//   for s in "8 512 32000" "32 512 2752" "128 512 2752" "64 1376 512"; do /tmp/share_gap $s 400; done
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "matmul.h"

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[size_t(p * double(v.size() - 1))];
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s M K N calls\n", argv[0]);
    return 2;
  }
  const int64_t m = std::atoll(argv[1]), k = std::atoll(argv[2]), n = std::atoll(argv[3]), calls = std::atoll(argv[4]);
  const int64_t vectors = (n + kWidth - 1) / kWidth, groups = (vectors + kGroup - 1) / kGroup;
  std::vector<std::vector<float>> w(8, std::vector<float>(groups * kGroup * kWidth * k, 0.01f));
  std::vector<float> x(m * k, 0.5f), y(m * n);
  std::vector<double> fixed, gap, shared;
  for (int64_t c = 0; c < calls; ++c) {
    const float *wc = w[c % 8].data();
    double done[2] = {0, 0};
    auto t0 = Clock::now();
    ParallelRanges(groups, 2, [&](int64_t g0, int64_t g1) {
      Columns(x.data(), wc, y.data(), m, k, n, kGroup * g0, std::min(kGroup * g1, vectors), std::min(kGroup * g1, vectors));
      done[g0 == 0 ? 0 : 1] = Since(t0);
    });
    fixed.push_back(Since(t0));
    gap.push_back(std::abs(done[0] - done[1]));
    t0 = Clock::now();
    StealingRanges(groups, 2, [&](int64_t g0, int64_t g1, int64_t ahead) {
      Columns(x.data(), wc, y.data(), m, k, n, kGroup * g0, std::min(kGroup * g1, vectors), std::min(kGroup * ahead, vectors));
    });
    shared.push_back(Since(t0));
  }
  double gaps = 0, total = 0;
  for (int64_t c = 0; c < calls; ++c) gaps += gap[c], total += fixed[c];
  std::printf("M=%ld %ldx%ld: fixed shares p50 %.0f us (the faster thread waits %.0f %% of it, p90 gap %.0f us), "
              "shared p50 %.0f us: %.2fx\n", long(m), long(k), long(n), Percentile(fixed, .5), 100 * gaps / total,
              Percentile(gap, .9), Percentile(shared, .5), Percentile(fixed, .5) / Percentile(shared, .5));
  return 0;
}
