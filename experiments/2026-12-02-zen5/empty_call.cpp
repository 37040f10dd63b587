// What one kernel call's threading costs: ParallelRanges over 2 threads with nothing to do, 20000
// calls back to back, 3 rounds (common.h from the folder given with -I):
//   g++ -std=c++17 -O3 -march=native -pthread -I../../mindformers/msllama/kernels empty_call.cpp \
//       -o /tmp/empty_call && /tmp/empty_call
#include <chrono>
#include <cstdio>

#include "common.h"

int main() {
  volatile int64_t sink = 0;
  for (int threads : {1, 2}) {
    for (int round = 0; round < 3; ++round) {
      const int calls = 20000;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) ParallelRanges(2, threads, [&](int64_t a, int64_t b) { sink = sink + (b - a); });
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      std::printf("threads %d: %.1f us per call\n", threads, us / calls);
    }
  }
}
