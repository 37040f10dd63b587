// Paged decode attention for MindSpore's CPU `Custom(func_type="aot")` op, fp32.
//
// For every sequence b and query head (kvh, g):
//   out[b, kvh, g] = softmax(q[b, kvh, g] . K[rows]) @ V[rows],  rows = kvh * S + slots[b, j],
//   j < context_lens[b]
// K/V are read in place from the flat head-major cache [kv_heads * S, D] (S slots per head), only
// up to each sequence's own context length: the cost does not grow with the padded width L of
// the slot table nor with the other sequences of the batch. Queries arrive already scaled.
//
// Inputs (MindSpore passes inputs then outputs):
//   0 q            float32 [B, KVH, G, D]   G query heads share one KV head (GQA; G = 1 is MHA)
//   1 k_cache      float32 [KVH * S, D]
//   2 v_cache      float32 [KVH * S, D]
//   3 slots        int32   [B, L]            cache slot of each context token, L >= context
//   4 context_lens int32   [B]               clipped to [0, L]; 0 gives a zero output row
//   5 out          float32 [B, KVH, G, D]
// Returns 0, or a nonzero code that MindSpore turns into an exception (see the error codes).
//
// Arithmetic: fp32 with fp32 accumulation, max-subtracted softmax, on 8-float vectors (GCC vector
// extensions: AVX with -march=native, split into SSE or scalar code elsewhere). The autovectoriser
// was not trusted here: it spilled dot-product lanes to the stack, scalarised the exp loop and
// turned the V accumulation into gathers. A sequence's result depends only on its own data and
// length, never on the batch, the bucket width or the thread that computed it.
//
// Threads: the calling thread plus helpers started for this call and joined before returning
// (MSLLAMA_KERNEL_THREADS, default the CPUs this process may use). Not OpenMP: libgomp's workers
// spin after a parallel region and took the cores from MindSpore's next kernels (measured 2x
// slower steps). Small calls stay on the calling thread.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <thread>
#include <vector>

namespace {

enum Status : int {
  kOk = 0,
  kBadArity = 1,      // not 5 inputs + 1 output
  kBadDtype = 2,      // q/k/v/out not float32, slots/context_lens not int32
  kBadShape = 3,      // ranks or sizes inconsistent
  kBadSlot = 4,       // a slot index outside [0, S)
  kNoMemory = 5,
};

constexpr int64_t kMaxGroup = 64;

typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

inline F8 Load(const float *p) {
  F8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float *p, F8 v) { std::memcpy(p, &v, sizeof(v)); }

inline F8 Splat(float x) { return F8{} + x; }

inline float HorizontalSum(F8 v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

inline float Dot(const float *a, const float *b, int64_t d) {
  F8 even = F8{}, odd = F8{};  // two chains: a single accumulator waits on each FMA's latency
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    even += Load(a + i) * Load(b + i);
    odd += Load(a + i + 8) * Load(b + i + 8);
  }
  if (i + 8 <= d) {
    even += Load(a + i) * Load(b + i);
    i += 8;
  }
  float s = HorizontalSum(even + odd);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// a += p * x over d floats
inline void Axpy(float *a, float p, const float *x, int64_t d) {
  const F8 pv = Splat(p);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) Store(a + i, Load(a + i) + pv * Load(x + i));
  for (; i < d; ++i) a[i] += p * x[i];
}

// exp(x) for x <= 0 (scores minus their max): x = n ln2 + r with |r| <= ln2 / 2, e^r by its
// degree-7 Taylor polynomial (truncation < 1e-8 relative), 2^n written into the exponent bits.
// About 2 fp32 ulp. Below -87 (a weight under 2e-38 of the largest) it returns e^-87.
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

// s[0:n] = exp(s[0:n] - max); returns their sum.
float ExpShiftedSum(float *s, int64_t n) {
  float mx = s[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, s[j]);
  const F8 shift = Splat(mx);
  F8 sum = F8{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const F8 e = ExpNonPositive(Load(s + j) - shift);
    Store(s + j, e);
    sum += e;
  }
  float total = HorizontalSum(sum);
  if (j < n) {  // the tail through a full vector; its unused lanes are exp(0) and dropped
    float tail[8] = {mx, mx, mx, mx, mx, mx, mx, mx};
    std::memcpy(tail, s + j, sizeof(float) * (n - j));
    Store(tail, ExpNonPositive(Load(tail) - shift));
    for (int64_t t = 0; j + t < n; ++t) {
      s[j + t] = tail[t];
      total += tail[t];
    }
  }
  return total;
}

struct Dims {
  int64_t batch, kv_heads, group, head_dim, slots_per_head, width;
};

// One (sequence, KV head) pair: its G query heads share every K/V row loaded.
// scores holds G * L floats, acc G * D.
int AttendOne(const Dims &m, int64_t b, int64_t kvh, const float *q, const float *k_cache,
              const float *v_cache, const int32_t *slots, int64_t n, float *out, float *scores, float *acc) {
  const int64_t d = m.head_dim, g_count = m.group, width = m.width;
  const int64_t head_base = kvh * m.slots_per_head;
  const int32_t *seq_slots = slots + b * width;
  const float *qb = q + ((b * m.kv_heads + kvh) * g_count) * d;
  float *ob = out + ((b * m.kv_heads + kvh) * g_count) * d;
  if (n == 0) {
    std::memset(ob, 0, sizeof(float) * g_count * d);
    return kOk;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int32_t slot = seq_slots[j];
    if (slot < 0 || slot >= m.slots_per_head) return kBadSlot;
    const float *k_row = k_cache + (head_base + slot) * d;
    for (int64_t g = 0; g < g_count; ++g) scores[g * width + j] = Dot(qb + g * d, k_row, d);
  }
  float inv_sum[kMaxGroup];
  for (int64_t g = 0; g < g_count; ++g) inv_sum[g] = 1.0f / ExpShiftedSum(scores + g * width, n);
  std::memset(acc, 0, sizeof(float) * g_count * d);
  for (int64_t j = 0; j < n; ++j) {
    const float *v_row = v_cache + (head_base + seq_slots[j]) * d;
    for (int64_t g = 0; g < g_count; ++g) Axpy(acc + g * d, scores[g * width + j], v_row, d);
  }
  for (int64_t i = 0; i < g_count * d; ++i) ob[i] = acc[i] * inv_sum[i / d];
  return kOk;
}

std::unique_ptr<float[]> Scratch(int64_t floats) {
  return std::unique_ptr<float[]>(new (std::nothrow) float[std::max<int64_t>(floats, 1)]);
}

bool IsType(const char *dtype, const char *want) { return std::strcmp(dtype, want) == 0; }

int CheckArgs(int nparam, int *ndims, int64_t **shapes, const char **dtypes, Dims *m) {
  if (nparam != 6) return kBadArity;
  for (int i : {0, 1, 2, 5}) {
    if (!IsType(dtypes[i], "float32")) return kBadDtype;
  }
  if (!IsType(dtypes[3], "int32") || !IsType(dtypes[4], "int32")) return kBadDtype;
  if (ndims[0] != 4 || ndims[1] != 2 || ndims[2] != 2 || ndims[3] != 2 || ndims[4] != 1 || ndims[5] != 4) {
    return kBadShape;
  }
  const int64_t *q = shapes[0];
  *m = Dims{q[0], q[1], q[2], q[3], 0, shapes[3][1]};
  if (m->kv_heads <= 0 || m->group <= 0 || m->group > kMaxGroup || m->head_dim <= 0) return kBadShape;
  if (shapes[1][0] != shapes[2][0] || shapes[1][1] != m->head_dim || shapes[2][1] != m->head_dim) return kBadShape;
  if (shapes[1][0] % m->kv_heads != 0) return kBadShape;
  m->slots_per_head = shapes[1][0] / m->kv_heads;
  if (shapes[3][0] != m->batch || shapes[4][0] != m->batch) return kBadShape;
  for (int i = 0; i < 4; ++i) {
    if (shapes[5][i] != q[i]) return kBadShape;
  }
  return kOk;
}

// Below this many K/V rows per call, starting a thread costs more than it saves.
constexpr int64_t kRowsPerExtraThread = 4096;

int ThreadCount(int64_t rows, int64_t items) {
  int wanted = 0;
  if (const char *env = std::getenv("MSLLAMA_KERNEL_THREADS")) wanted = std::atoi(env);
  if (wanted <= 0) {
    cpu_set_t set;
    wanted = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  const int64_t by_work = 1 + rows / kRowsPerExtraThread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({wanted, by_work, items})));
}

}  // namespace

extern "C" int PagedDecodeAttention(int nparam, void **params, int *ndims, int64_t **shapes,
                                    const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  Dims m{};
  const int status = CheckArgs(nparam, ndims, shapes, dtypes, &m);
  if (status != kOk) return status;
  const auto *q = static_cast<const float *>(params[0]);
  const auto *k_cache = static_cast<const float *>(params[1]);
  const auto *v_cache = static_cast<const float *>(params[2]);
  const auto *slots = static_cast<const int32_t *>(params[3]);
  const auto *context_lens = static_cast<const int32_t *>(params[4]);
  auto *out = static_cast<float *>(params[5]);
  const int64_t items = m.batch * m.kv_heads;
  int64_t rows = 0;
  for (int64_t b = 0; b < m.batch; ++b) rows += std::clamp<int64_t>(context_lens[b], 0, m.width);
  rows *= m.kv_heads;

  std::atomic<int64_t> next{0};
  std::atomic<int> failure{kOk};
  // Items are claimed one at a time: ragged context lengths make them very unequal.
  auto work = [&]() {
    const auto scores = Scratch(m.group * m.width);
    const auto acc = Scratch(m.group * m.head_dim);
    if (!scores || !acc) {
      failure.store(kNoMemory);
      return;
    }
    for (int64_t item = next++; item < items && failure.load(std::memory_order_relaxed) == kOk; item = next++) {
      const int64_t b = item / m.kv_heads, kvh = item % m.kv_heads;
      const int64_t n = std::clamp<int64_t>(context_lens[b], 0, m.width);
      const int rc = AttendOne(m, b, kvh, q, k_cache, v_cache, slots, n, out, scores.get(), acc.get());
      if (rc != kOk) failure.store(rc);
    }
  };
  std::vector<std::thread> helpers;
  try {
    for (int t = 1; t < ThreadCount(rows, items); ++t) helpers.emplace_back(work);
  } catch (const std::exception &) {
    // no thread available: the ones started (at least this one) do all the work
  }
  work();
  for (auto &h : helpers) h.join();
  return failure.load();
}
