// Shared by the CPU kernels (each is built as its own library with -I this folder; the build key
// hashes this header too, see build.py).
#pragma once

#include <sched.h>

#include <cstdlib>
#include <cstring>

namespace {

// GCC vector loads/stores through memcpy: no alignment assumed, compiled to plain vector moves.
template <class V>
inline V Load(const float *p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V>
inline void Store(float *p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

// Threads a kernel may use: MSLLAMA_KERNEL_THREADS if set > 0, else the CPUs this process may run on.
inline int KernelThreads() {
  if (const char *env = std::getenv("MSLLAMA_KERNEL_THREADS")) {
    if (std::atoi(env) > 0) return std::atoi(env);
  }
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
}

}  // namespace
