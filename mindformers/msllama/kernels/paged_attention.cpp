// Paged decode attention for MindSpore's CPU `Custom(func_type="aot")` op, fp32, with the rotary
// embedding, the query scale and the cache write of the step's new K/V rows done in the same call.
//
// Cache layout, block-major (one Parameter per layer, as msllama/model.py builds it): a block
// holds the K rows of every KV head, then their V rows, each head's rows contiguous:
//   row(block, kind, h, offset) = ((block * 2 + kind) * KVH + h) * BS + offset,  kind 0 = K, 1 = V
// so a block is one contiguous 2 * KVH * BS * D floats (64 KB on the bench model). Reading whole
// blocks matters more than any arithmetic here: on this machine one thread reads random 4 KB
// chunks at ~6 GB/s and 32-128 KB chunks at 15-19 GB/s (experiments/2026-12-01-decode-kernels).
// The hardware prefetcher starts cold at each block; each row read also prefetches the same row
// of the next block in the table, which took random 32 KB reads from 15-16 to 18 GB/s on a Zen 1
// host (experiments/2026-12-02-prefetch).
//
// Each row b of qkv is one token, at position p = context_lens[b] - 1 of its sequence: its query
// heads, then its K heads, then its V heads, as the fused QKV projection produces them. First the
// rotary embedding (rotate-half, from the cos/sin tables' row p) is applied to K and each token's
// K/V rows are stored at position p (block block_tables[b, p / BS], offset p % BS); then, with
// q the rotated query times 1 / sqrt(D), for each query head (kvh, g)
//   out[b, kvh, g] = softmax(q[b, kvh, g] . K[kvh, 0..p]) @ V[kvh, 0..p]
// reading the cache in place, only up to the token's own position: the cost does not grow with
// the bucket width M nor with the other rows of the batch.
//
// Inputs (MindSpore passes inputs then outputs):
//   0 qkv          float32 [B, (KVH * G + 2 * KVH) * D]   G query heads share one KV head (GQA)
//   1 kv_cache     float32 [NB * 2 * KVH * BS, D], written in place (the step's new rows)
//   2 rope_cos     float32 [S, D]           rotary tables (rotate-half layout), S positions
//   3 rope_sin     float32 [S, D]
//   4 block_tables int32   [B, M]           physical blocks of each row's sequence, in order
//   5 context_lens int32   [B]              tokens of the sequence up to this row, in [1, min(M * BS, S)]
//   6 out          float32 [B, KVH, G, D]
// Returns 0, or a nonzero code that MindSpore turns into an exception (see the error codes).
// Padded batch rows point at the trash block 0 with context 1: they write and read only there.
//
// Arithmetic: fp32 with fp32 accumulation, max-subtracted softmax, on 8-float vectors (GCC vector
// extensions: AVX with -march=native, split into SSE or scalar code elsewhere). The autovectoriser
// was not trusted here: it spilled dot-product lanes to the stack, scalarised the exp loop and
// turned the V accumulation into gathers. A sequence's result depends only on its own data and
// length, never on the batch, the bucket width or the thread that computed it.
//
// Threads: the calling thread plus the library's long-lived helpers (HelperPool in common.h;
// MSLLAMA_KERNEL_THREADS, default the CPUs this process may use). Not OpenMP: libgomp's workers
// spin after a parallel region and took the cores from MindSpore's next kernels (measured 2x
// slower steps). Small calls stay on the calling thread. All writes happen before any thread
// reads, so no row is read while it is written.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "common.h"

namespace {

enum Status : int {
  kOk = 0,
  kBadArity = 1,      // not 6 inputs + 1 output
  kBadDtype = 2,      // qkv/cache/tables/out not float32, block_tables/context_lens not int32
  kBadShape = 3,      // ranks or sizes inconsistent (the cache rows not a whole number of blocks)
  kBadBlock = 4,      // a block index (within a context) outside [0, NB)
  kNoMemory = 5,
  kBadLength = 6,     // a context length outside [1, min(M * BS, S)]
};

constexpr int64_t kMaxHeads = 256;  // KVH * G query heads

inline float Dot(const float *a, const float *b, int64_t d) {
  F8 even = F8{}, odd = F8{};  // two chains: a single accumulator waits on each FMA's latency
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    even += Load<F8>(a + i) * Load<F8>(b + i);
    odd += Load<F8>(a + i + 8) * Load<F8>(b + i + 8);
  }
  if (i + 8 <= d) {
    even += Load<F8>(a + i) * Load<F8>(b + i);
    i += 8;
  }
  float s = HorizontalSum(even + odd);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// Ask for the d floats at p ahead of their use (one request per 64-byte line).
inline void PrefetchRow(const float *p, int64_t d) {
  for (int64_t i = 0; i < d; i += 16) __builtin_prefetch(p + i);
}

// a += p * x over d floats
inline void Axpy(float *a, float p, const float *x, int64_t d) {
  const F8 pv = Splat(p);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) Store(a + i, Load<F8>(a + i) + pv * Load<F8>(x + i));
  for (; i < d; ++i) a[i] += p * x[i];
}

// s[0:n] = exp(s[0:n] - max); returns their sum.
float ExpShiftedSum(float *s, int64_t n) {
  float mx = s[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, s[j]);
  const F8 shift = Splat(mx);
  F8 sum = F8{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const F8 e = ExpNonPositive(Load<F8>(s + j) - shift);
    Store(s + j, e);
    sum += e;
  }
  float total = HorizontalSum(sum);
  if (j < n) {  // the tail through a full vector; its unused lanes are exp(0) and dropped
    float tail[8] = {mx, mx, mx, mx, mx, mx, mx, mx};
    std::memcpy(tail, s + j, sizeof(float) * (n - j));
    Store(tail, ExpNonPositive(Load<F8>(tail) - shift));
    for (int64_t t = 0; j + t < n; ++t) {
      s[j + t] = tail[t];
      total += tail[t];
    }
  }
  return total;
}

struct Dims {
  int64_t batch, kv_heads, group, head_dim, block_size, num_blocks, width, positions;  // width = M blocks
  int64_t block_floats() const { return 2 * kv_heads * block_size * head_dim; }
  int64_t q_floats() const { return kv_heads * group * head_dim; }
  int64_t qkv_floats() const { return q_floats() + 2 * kv_heads * head_dim; }
};

// dst = rotate-half rotary embedding of x (d floats, d even) with table rows c, s, times scale.
inline void Rotate(float *dst, const float *x, const float *c, const float *s, int64_t d, float scale) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) dst[i] = (x[i] * c[i] - x[i + half] * s[i]) * scale;
  for (int64_t i = half; i < d; ++i) dst[i] = (x[i] * c[i] + x[i - half] * s[i]) * scale;
}

// Row pointer of (block, kind, head, offset) in the block-major cache.
inline const float *Row(const Dims &m, const float *cache, int64_t block, int64_t kind, int64_t h, int64_t off) {
  return cache + block * m.block_floats() + ((kind * m.kv_heads + h) * m.block_size + off) * m.head_dim;
}

// Row b, KV heads [h0, h0 + hc): their G query heads each, q holding those hc * G rotated, scaled
// queries. Blocks are walked in table order and, inside a block, head after head, so reads are
// sequential within each block. scores holds hc * G * (M * BS) floats, acc hc * G * D.
int AttendHeads(const Dims &m, int64_t b, int64_t h0, int64_t hc, const float *q, const float *cache,
                const int32_t *tables, int64_t n, float *out, float *scores, float *acc) {
  const int64_t d = m.head_dim, g_count = m.group, bs = m.block_size, stride = m.width * bs;
  const int32_t *table = tables + b * m.width;
  const int64_t blocks = (n + bs - 1) / bs;
  for (int64_t i = 0; i < blocks; ++i) {
    if (table[i] < 0 || table[i] >= m.num_blocks) return kBadBlock;
  }
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t rows = std::min(bs, n - i * bs);
    for (int64_t h = 0; h < hc; ++h) {
      const float *qh = q + h * g_count * d;
      const float *k_row = Row(m, cache, table[i], 0, h0 + h, 0);
      // after the last block's K rows, the first block's V rows (the second pass) come next
      const float *k_next =
          i + 1 < blocks ? Row(m, cache, table[i + 1], 0, h0 + h, 0) : Row(m, cache, table[0], 1, h0 + h, 0);
      float *sh = scores + h * g_count * stride + i * bs;
      for (int64_t j = 0; j < rows; ++j, k_row += d, k_next += d) {
        PrefetchRow(k_next, d);
        for (int64_t g = 0; g < g_count; ++g) sh[g * stride + j] = Dot(qh + g * d, k_row, d);
      }
    }
  }
  float inv_sum[kMaxHeads];
  for (int64_t r = 0; r < hc * g_count; ++r) inv_sum[r] = 1.0f / ExpShiftedSum(scores + r * stride, n);
  std::memset(acc, 0, sizeof(float) * hc * g_count * d);
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t rows = std::min(bs, n - i * bs);
    for (int64_t h = 0; h < hc; ++h) {
      const float *v_row = Row(m, cache, table[i], 1, h0 + h, 0);
      const float *v_next = Row(m, cache, table[i + 1 < blocks ? i + 1 : i], 1, h0 + h, 0);
      const float *sh = scores + h * g_count * stride + i * bs;
      float *ah = acc + h * g_count * d;
      for (int64_t j = 0; j < rows; ++j, v_row += d, v_next += d) {
        PrefetchRow(v_next, d);
        for (int64_t g = 0; g < g_count; ++g) Axpy(ah + g * d, sh[g * stride + j], v_row, d);
      }
    }
  }
  float *ob = out + ((b * m.kv_heads + h0) * g_count) * d;
  for (int64_t i = 0; i < hc * g_count * d; ++i) ob[i] = acc[i] * inv_sum[i / d];
  return kOk;
}

// Store each row's K (rotated) and V at its position (before any thread reads).
int WriteNewRows(const Dims &m, float *cache, const float *qkv, const float *cos, const float *sin,
                 const int32_t *tables, const int32_t *context_lens) {
  const int64_t d = m.head_dim, bs = m.block_size;
  for (int64_t b = 0; b < m.batch; ++b) {
    const int64_t pos = context_lens[b] - 1;
    if (pos < 0 || pos >= m.width * bs || pos >= m.positions) return kBadLength;
    const int32_t block = tables[b * m.width + pos / bs];
    if (block < 0 || block >= m.num_blocks) return kBadBlock;
    const float *k = qkv + b * m.qkv_floats() + m.q_floats(), *v = k + m.kv_heads * d;
    for (int64_t h = 0; h < m.kv_heads; ++h) {
      Rotate(const_cast<float *>(Row(m, cache, block, 0, h, pos % bs)), k + h * d, cos + pos * d, sin + pos * d, d,
             1.0f);
      std::memcpy(const_cast<float *>(Row(m, cache, block, 1, h, pos % bs)), v + h * d, sizeof(float) * d);
    }
  }
  return kOk;
}

std::unique_ptr<float[]> Scratch(int64_t floats) {
  return std::unique_ptr<float[]>(new (std::nothrow) float[std::max<int64_t>(floats, 1)]);
}

bool IsType(const char *dtype, const char *want) { return std::strcmp(dtype, want) == 0; }

int CheckArgs(int nparam, int *ndims, int64_t **shapes, const char **dtypes, Dims *m) {
  if (nparam != 7) return kBadArity;
  for (int i : {0, 1, 2, 3, 6}) {
    if (!IsType(dtypes[i], "float32")) return kBadDtype;
  }
  if (!IsType(dtypes[4], "int32") || !IsType(dtypes[5], "int32")) return kBadDtype;
  const int want_ndims[7] = {2, 2, 2, 2, 2, 1, 4};
  for (int i = 0; i < 7; ++i) {
    if (ndims[i] != want_ndims[i]) return kBadShape;
  }
  const int64_t *o = shapes[6];
  *m = Dims{o[0], o[1], o[2], o[3], 0, 0, shapes[4][1], shapes[2][0]};
  if (m->kv_heads <= 0 || m->group <= 0 || m->kv_heads * m->group > kMaxHeads || m->head_dim <= 0 ||
      m->head_dim % 2 != 0) {
    return kBadShape;
  }
  if (shapes[0][0] != m->batch || shapes[0][1] != m->qkv_floats() || shapes[1][1] != m->head_dim) return kBadShape;
  for (int i : {2, 3}) {
    if (shapes[i][0] != m->positions || shapes[i][1] != m->head_dim) return kBadShape;
  }
  if (shapes[4][0] != m->batch || shapes[5][0] != m->batch || m->width <= 0) return kBadShape;
  return kOk;
}

// Below this many K/V rows per call, starting a thread costs more than it saves.
constexpr int64_t kRowsPerExtraThread = 4096;

int ThreadCount(int64_t rows, int64_t items) {
  const int64_t by_work = 1 + rows / kRowsPerExtraThread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({KernelThreads(), by_work, items})));
}

// The block size is the one dimension the inputs' shapes do not carry (the cache is 2-D, as
// scatter_update needs), so there is one entry point per supported block size.
template <int64_t kBlockSize>
int PagedDecodeAttentionImpl(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Dims m{};
  int status = CheckArgs(nparam, ndims, shapes, dtypes, &m);
  if (status != kOk) return status;
  m.block_size = kBlockSize;
  if (shapes[1][0] % (2 * m.kv_heads * kBlockSize) != 0) return kBadShape;
  m.num_blocks = shapes[1][0] / (2 * m.kv_heads * kBlockSize);
  const auto *qkv = static_cast<const float *>(params[0]);
  auto *cache = static_cast<float *>(params[1]);
  const auto *cos = static_cast<const float *>(params[2]);
  const auto *sin = static_cast<const float *>(params[3]);
  const auto *tables = static_cast<const int32_t *>(params[4]);
  const auto *context_lens = static_cast<const int32_t *>(params[5]);
  auto *out = static_cast<float *>(params[6]);
  status = WriteNewRows(m, cache, qkv, cos, sin, tables, context_lens);
  if (status != kOk) return status;
  const float scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
  // An item is one sequence and a run of its KV heads: whole sequences keep reads block-sized;
  // small batches split heads so that every thread has work.
  int64_t splits = 1;
  while (m.batch * splits < 8 && m.kv_heads % (2 * splits) == 0) splits *= 2;
  const int64_t heads_per_item = m.kv_heads / splits, items = m.batch * splits;
  int64_t rows = 0;
  for (int64_t b = 0; b < m.batch; ++b) rows += context_lens[b];
  rows *= m.kv_heads;

  std::atomic<int64_t> next{0};
  std::atomic<int> failure{kOk};
  // Items are claimed one at a time: ragged context lengths make them very unequal.
  auto work = [&]() {
    const auto scores = Scratch(heads_per_item * m.group * m.width * kBlockSize);
    const auto acc = Scratch(heads_per_item * m.group * m.head_dim);
    const auto q = Scratch(heads_per_item * m.group * m.head_dim);
    if (!scores || !acc || !q) {
      failure.store(kNoMemory);
      return;
    }
    for (int64_t item = next++; item < items && failure.load(std::memory_order_relaxed) == kOk; item = next++) {
      const int64_t b = item / splits, h0 = (item % splits) * heads_per_item, d = m.head_dim;
      const int64_t pos = context_lens[b] - 1, heads = heads_per_item * m.group;
      const float *qb = qkv + b * m.qkv_floats() + h0 * m.group * d;
      for (int64_t r = 0; r < heads; ++r) Rotate(q.get() + r * d, qb + r * d, cos + pos * d, sin + pos * d, d, scale);
      const int rc = AttendHeads(m, b, h0, heads_per_item, q.get(), cache, tables, context_lens[b], out, scores.get(),
                                 acc.get());
      if (rc != kOk) failure.store(rc);
    }
  };
  Helpers().Run(ThreadCount(rows, items), [&](int) { work(); });
  return failure.load();
}

}  // namespace

#define MSLLAMA_PAGED_ATTENTION(BS)                                                                      \
  extern "C" int PagedDecodeAttentionBS##BS(int nparam, void **params, int *ndims, int64_t **shapes,  \
                                             const char **dtypes, void *stream, void *extra) {         \
    (void)stream;                                                                                      \
    (void)extra;                                                                                       \
    return PagedDecodeAttentionImpl<BS>(nparam, params, ndims, shapes, dtypes);                        \
  }
// keep in step with BLOCK_SIZES in paged_attention.py
MSLLAMA_PAGED_ATTENTION(8)
MSLLAMA_PAGED_ATTENTION(16)
MSLLAMA_PAGED_ATTENTION(32)
MSLLAMA_PAGED_ATTENTION(64)
MSLLAMA_PAGED_ATTENTION(128)
