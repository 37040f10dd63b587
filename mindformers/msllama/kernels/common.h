// Shared by the CPU kernels (each is built as its own library with -I this folder; the build key
// hashes every header of the folder, see build.py).
#pragma once

#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace {

// The kernels' return codes (0 = done); MindSpore raises a nonzero one as a RuntimeError.
enum Status : int {
  kOk = 0,
  kBadArity = 1,   // not the entry point's number of inputs + outputs
  kBadDtype = 2,
  kBadShape = 3,   // ranks or sizes inconsistent
  kBadBlock = 4,   // a block index (within a context) outside [0, NB)
  kNoMemory = 5,
  kBadLength = 6,  // a context length outside [1, min(M * BS, S)]
};

inline bool IsType(const char *dtype, const char *want) { return std::strcmp(dtype, want) == 0; }

// Whether all of a Custom op's parameters (inputs and outputs) are float32.
inline bool AllFloat32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (!IsType(dtypes[i], "float32")) return false;
  }
  return true;
}

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

typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

// Every lane x. (`V{} + x` would cost an add and a shuffle per call: adding +0.0 turns -0.0 into
// +0.0, so the compiler keeps it; in the matmul tile that halved the FMA rate on AVX2. Subtracting
// +0.0 changes nothing, so `x - V{}` compiles to a bare broadcast.)
template <class V = F8>
inline V Splat(float x) { return x - V{}; }

// a * b + c with one rounding where the CPU has FMA, whatever the compiler decides: left to
// contraction, GCC's AMD Zen tuning turns some loops' FMA chains into a multiply and an add (seen
// in the matmul's one-vector tiles), so the same sum would round differently in another tile.
template <class V>
inline V MulAdd(V a, V b, V c) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#endif
#if defined(__FMA__)
  if constexpr (sizeof(V) == 32) return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#endif
  return a * b + c;  // no FMA instruction: nothing to contract into
}

inline float HorizontalSum(F8 v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

// exp(x) for x <= 0 (softmax scores minus their max; -|g| in a sigmoid): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (truncation < 1e-8 relative), 2^n written
// into the exponent bits. About 2 fp32 ulp. Below -87 (under 2e-38) it returns e^-87.
inline F8 ExpNonPositive(F8 x) {
  const float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  x = x < -87.0f ? Splat(-87.0f) : x;
  const F8 n = (x * kLog2e + kRound) - kRound;
  const F8 r = (x - n * kLn2Hi) - n * kLn2Lo;
  F8 p = Splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I8 bits = (__builtin_convertvector(n, I8) + 127) << 23;
  F8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Threads a kernel may use: MSLLAMA_KERNEL_THREADS if set > 0, else the CPUs this process may run on.
inline int KernelThreads() {
  if (const char *env = std::getenv("MSLLAMA_KERNEL_THREADS")) {
    if (std::atoi(env) > 0) return std::atoi(env);
  }
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
}

// Long-lived helper threads, started on first use and asleep between steps. One per extra CPU is
// enough: a thread started per call measured 4-9 % slower steps (and up to 1.2x at B=32 with the
// matmul kernel in every graph, experiments/2026-12-02-avx2-kernels). Each kernel library has its
// own pool. Never destroyed: its threads outlive static destructors.
class HelperPool {
 public:
  // task(0) on the calling thread, task(1 .. n-1) on helpers; tasks no helper can take (none could
  // be started, or another call is using them) run on the calling thread too.
  void Run(int n, const std::function<void(int)> &task) {
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    int helpers = 0;
    if (call.owns_lock() && n > 1) {
      std::lock_guard<std::mutex> l(mu_);
      Grow(n - 1);
      helpers = std::min(n - 1, size_);
      task_ = &task;
      active_ = helpers;
      busy_.store(helpers);
      ++generation_;
    }
    if (helpers > 0) wake_.notify_all();
    task(0);
    for (int t = helpers + 1; t < n; ++t) task(t);
    if (helpers > 0 && !Within(kCallerPoll, [&] { return busy_.load() == 0; })) {
      std::unique_lock<std::mutex> l(mu_);
      finished_.wait(l, [&] { return busy_.load() == 0; });
    }
  }

 private:
  // How long the caller polls for its helpers before it sleeps. Waking a sleeping thread took
  // ~30 us on a 2-vCPU VM, and a sleeping caller made every call ~65 us longer than its work
  // (experiments/2026-12-02-zen5); the caller has nothing else to do meanwhile.
  static constexpr std::chrono::microseconds kCallerPoll{200};
  // How long a helper polls for the next call before it sleeps. A layer op makes ~5 calls back to
  // back and the next layer's op starts microseconds later; polling made decode steps of 1-16 rows
  // 7-19 % faster than a wake-up per call (experiments/2026-12-03-decode-layer). Between steps the
  // helper soon sleeps. In graphs of one op per piece it takes the core from MindSpore's MatMul
  // for up to this long.
  static constexpr std::chrono::microseconds kHelperPoll{100};

  // Whether done() holds within `limit`: polled with pauses, the clock read every 64 polls.
  template <class Done>
  static bool Within(std::chrono::microseconds limit, Done done) {
    const auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (done()) return true;
        _mm_pause();
      }
      if (std::chrono::steady_clock::now() >= end) return false;
    }
  }

  void Grow(int n) {
    try {
      for (; size_ < n; ++size_) std::thread([this, i = size_] { Serve(i); }).detach();
    } catch (const std::exception &) {
      // no more threads: the ones there are take the tasks they can
    }
  }

  void Serve(int i) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> l(mu_);
      if (generation_.load() == seen) {
        l.unlock();
        const bool called = Within(kHelperPoll, [&] { return generation_.load() != seen; });
        l.lock();
        if (!called) wake_.wait(l, [&] { return generation_.load() != seen; });
      }
      seen = generation_.load();
      if (i >= active_) continue;
      const std::function<void(int)> *task = task_;
      l.unlock();
      (*task)(i + 1);
      l.lock();
      if (busy_.fetch_sub(1) == 1) finished_.notify_all();
    }
  }

  std::mutex call_mu_, mu_;
  std::condition_variable wake_, finished_;
  const std::function<void(int)> *task_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  int size_ = 0, active_ = 0;
  std::atomic<int> busy_{0};  // helpers still working on this call; polled by the caller
};

// This process's pool: a child forked after the pool started has none of its threads, so it gets
// a new one.
inline HelperPool &Helpers() {
  static pid_t owner = 0;
  static HelperPool *pool = nullptr;
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  if (pool == nullptr || owner != getpid()) {
    pool = new HelperPool;
    owner = getpid();
  }
  return *pool;
}

// `threads` within [1, max(n, 1)].
inline int64_t ClampThreads(int64_t n, int64_t threads) {
  return threads < 1 ? 1 : (threads > n ? (n > 0 ? n : 1) : threads);
}

// Runs fn(begin, end) over `threads` contiguous ranges of [0, n), the first on the calling thread
// and the others on the helper pool, all done before returning.
template <class F>
void ParallelRanges(int64_t n, int64_t threads, F fn) {
  threads = ClampThreads(n, threads);
  Helpers().Run(int(threads), [&](int t) { fn(n * t / threads, n * (t + 1) / threads); });
}

// ParallelRanges where a thread done early takes work from the others. Thread t owns the same
// contiguous share as there and runs it front to back in chunks of ~1/kStealPieces of it; once its
// share is empty it takes chunks from the back of the share with most left. fn(begin, end, ahead)
// runs each chunk; `ahead` is how far the same thread will probably go on after it (its share's
// end for its own chunks, the chunk's end for taken ones), for prefetching across chunks. On a
// shared 2-vCPU VM one vCPU is often slower for a while: with fixed shares the faster thread then
// idled for 11-33 % of a matmul call (experiments/2026-12-04-stealing).
constexpr int64_t kStealPieces = 16;

template <class F>
void StealingRanges(int64_t n, int64_t threads, F fn) {
  threads = ClampThreads(n, threads);
  if (threads == 1) return fn(int64_t{0}, n, n);
  struct alignas(64) Share {
    std::atomic<uint64_t> span;  // front << 32 | back: [front, back) not yet taken
  };
  const auto pack = [](int64_t front, int64_t back) { return uint64_t(front) << 32 | uint64_t(back); };
  const auto front = [](uint64_t span) { return int64_t(span >> 32); };
  const auto back = [](uint64_t span) { return int64_t(span & 0xffffffffu); };
  const auto bound = [&](int64_t t) { return n * t / threads; };  // share t is [bound(t), bound(t + 1))
  std::unique_ptr<Share[]> shares(new Share[threads]);
  for (int64_t t = 0; t < threads; ++t) shares[t].span.store(pack(bound(t), bound(t + 1)));
  const int64_t chunk = std::max<int64_t>(1, n / (threads * kStealPieces));
  Helpers().Run(int(threads), [&](int t) {
    for (uint64_t s = shares[t].span.load(); front(s) < back(s);) {  // own share, from the front
      const int64_t begin = front(s), end = std::min(back(s), begin + chunk);
      if (shares[t].span.compare_exchange_weak(s, pack(end, back(s)))) {
        fn(begin, end, bound(t + 1));
        s = shares[t].span.load();
      }
    }
    for (;;) {  // the others', from the back
      int64_t victim = -1, most = 0;
      for (int64_t u = 0; u < threads; ++u) {
        const uint64_t s = shares[u].span.load();
        if (back(s) - front(s) > most) victim = u, most = back(s) - front(s);
      }
      if (victim < 0) return;
      uint64_t s = shares[victim].span.load();
      const int64_t begin = std::max(front(s), back(s) - chunk), end = back(s);
      if (begin < end && shares[victim].span.compare_exchange_strong(s, pack(front(s), begin))) fn(begin, end, end);
    }
  });
}

}  // namespace
