// Paged decode attention over the block-major KV cache, fp32, with the rotary embedding, the query
// scale and the cache write of the step's new K/V rows done in the same call; shared by the
// attention op (paged_attention.cpp) and the whole decode layer (decode_layer.cpp).
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
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "common.h"

namespace {



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
  bool heads_valid() const {
    return kv_heads > 0 && group > 0 && kv_heads * group <= kMaxHeads && head_dim > 0 && head_dim % 2 == 0;
  }
  // Sets block_size and num_blocks from a cache of `rows` rows; false if that is no whole number of blocks.
  bool set_cache(int64_t rows, int64_t bs) {
    block_size = bs;
    num_blocks = rows / (2 * kv_heads * bs);
    return rows % (2 * kv_heads * bs) == 0;
  }
};

// The block sizes with an entry point (the cache is 2-D, as scatter_update needs, so its shape does
// not carry the block size): X(BS) once for each. Keep in step with BLOCK_SIZES in paged_attention.py.
#define MSLLAMA_FOR_BLOCK_SIZES(X) X(8) X(16) X(32) X(64) X(128)

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

// Below this many K/V rows per call, starting a thread costs more than it saves.
constexpr int64_t kRowsPerExtraThread = 4096;

int ThreadCount(int64_t rows, int64_t items) {
  const int64_t by_work = 1 + rows / kRowsPerExtraThread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({KernelThreads(), by_work, items})));
}

// Writes each row's new K/V, then out [B, KVH, G, D] = each row's attention, as described above.
// `m` carries every dimension, the block size and the number of blocks included.
inline int PagedAttention(const Dims &m, const float *qkv, float *cache, const float *cos, const float *sin,
                          const int32_t *tables, const int32_t *context_lens, float *out) {
  const int status = WriteNewRows(m, cache, qkv, cos, sin, tables, context_lens);
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
    const auto scores = Scratch(heads_per_item * m.group * m.width * m.block_size);
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
