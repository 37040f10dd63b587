// One whole Llama decoder layer of a decode step for MindSpore's CPU `Custom(func_type="aot")` op:
//   h   = x + Wo . attention(rope(Wqkv . rmsnorm(x, attention_norm)))   (the paged cache, attention.h)
//   out = h + W2 . silu_times_up(W13 . rmsnorm(h, ffn_norm))
// The same pieces as the per-op graph (matmul.h, attention.h, rows.h) in the same order, so each
// row's result is bit for bit the one of the small-batch ops. One op instead of the per-op layer's
// 11, with no MindSpore kernel between the pieces at any row count: decode steps ran 1.03-1.31x
// and a 1012-token prefill 1.19x faster (experiments/2026-12-03-decode-layer).
//
// Inputs (MindSpore passes inputs then outputs):
//   0 x               float32 [B, H]
//   1 attention_norm  float32 [H]
//   2 ffn_norm        float32 [H]
//   3 eps             float32 [1]
//   4 heads           int32   [2]             query heads, KV heads (D = H / query heads)
//   5 wqkv            float32 [Pq, H, 32]     panel-packed weights (matmul.h), N = (heads + 2 KVH) D
//   6 wo              float32 [Po, H, 32]     N = H
//   7 w13             float32 [P13, H, 32]    N = 2 F (gate then up)
//   8 w2              float32 [P2, F, 32]     N = H
//   9 kv_cache        float32 [NB * 2 * KVH * BS, D], written in place
//  10 rope_cos        float32 [S, D]
//  11 rope_sin        float32 [S, D]
//  12 block_tables    int32   [B, M]          trailing all-zero rows: padding, not computed (zero out)
//  13 context_lens    int32   [B]
//  14 out             float32 [B, H]
// Returns 0, or a nonzero code that MindSpore turns into an exception (Status in common.h).
//
// Threads: each matmul and the attention split their work over the calling thread and the
// helpers as the separate ops do; the row-wise parts split rows once a call has enough of them.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "common.h"
#include "matmul.h"
#include "rows.h"

namespace {

constexpr int kParams = 15;
constexpr int64_t kFloatsPerThread = 32768;  // row-wise work below this stays on the calling thread

// fn(r) for rows [0, n) of `width` floats each.
template <class F>
void ForRows(int64_t n, int64_t width, F fn) {
  const int64_t threads = std::min<int64_t>(KernelThreads(), 1 + n * width / kFloatsPerThread);
  ParallelRanges(n, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r);
  });
}

// The panel count a weight of n columns needs.
int64_t Panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

struct LayerDims {
  Dims attn;
  int64_t hidden, ffn;
};

int CheckArgs(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, LayerDims *l) {
  if (nparam != kParams) return kBadArity;
  for (int i = 0; i < kParams; ++i) {
    const bool integer = i == 4 || i == 12 || i == 13;
    if (!IsType(dtypes[i], integer ? "int32" : "float32")) return kBadDtype;
  }
  const int want_ndims[kParams] = {2, 1, 1, 1, 1, 3, 3, 3, 3, 2, 2, 2, 2, 1, 2};
  for (int i = 0; i < kParams; ++i) {
    if (ndims[i] != want_ndims[i]) return kBadShape;
  }
  if (shapes[4][0] != 2) return kBadShape;
  const auto *heads = static_cast<const int32_t *>(params[4]);
  const int64_t b = shapes[0][0], h = shapes[0][1], d = shapes[10][1];
  if (heads[1] <= 0 || heads[0] % heads[1] != 0) return kBadShape;
  l->hidden = h;
  l->ffn = shapes[8][1];
  l->attn = Dims{b, heads[1], heads[0] / heads[1], d, 0, 0, shapes[12][1], shapes[10][0]};
  const Dims &m = l->attn;
  if (!m.heads_valid() || heads[0] * d != h) return kBadShape;
  if (shapes[1][0] != h || shapes[2][0] != h || shapes[3][0] != 1 || shapes[14][0] != b || shapes[14][1] != h) {
    return kBadShape;
  }
  const int64_t weights[4][3] = {{5, m.qkv_floats(), h}, {6, h, h}, {7, 2 * l->ffn, h}, {8, h, l->ffn}};
  for (const auto &w : weights) {  // {input, N, K}
    const int64_t *s = shapes[w[0]];
    if (s[0] != Panels(w[1]) || s[1] != w[2] || s[2] != kPanel) return kBadShape;
  }
  if (shapes[9][1] != d || shapes[11][0] != m.positions || shapes[11][1] != d) return kBadShape;
  if (shapes[12][0] != b || shapes[13][0] != b || m.width <= 0) return kBadShape;
  return kOk;
}

// Scratch of the calling thread (MindSpore's kernel thread), grown to the largest step seen.
float *Buffer(std::vector<float> &v, int64_t floats) {
  if (static_cast<int64_t>(v.size()) < floats) v.resize(floats);
  return v.data();
}

// The K/V blocks the attention will read, in the order its threads claim the rows, as half
// blocks (K, then V); rows with the same table as the row before (a prompt's tokens in a
// prefill) add nothing. The QKV projection prefetches them (SideReads in matmul.h).
SideReads AttentionReads(const Dims &m, const float *cache, const int32_t *tables, const int32_t *context_lens,
                         std::vector<const char *> &pieces) {
  pieces.clear();
  const int64_t half = m.block_floats() / 2;
  for (int64_t r = 0; r < m.batch; ++r) {
    const int32_t *row = tables + r * m.width;
    if (r > 0 && std::equal(row, row + m.width, row - m.width)) continue;
    const int64_t blocks = std::min<int64_t>(m.width, (context_lens[r] + m.block_size - 1) / m.block_size);
    for (int64_t i = 0; i < blocks; ++i) {
      if (row[i] < 0 || row[i] >= m.num_blocks) continue;  // the attention reports it
      for (int64_t kind = 0; kind < 2; ++kind) {
        pieces.push_back(reinterpret_cast<const char *>(cache + row[i] * m.block_floats() + kind * half));
      }
    }
  }
  return SideReads{pieces.data(), static_cast<int64_t>(pieces.size()), int64_t{sizeof(float)} * half};
}

int DecodeLayerImpl(int64_t block_size, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  LayerDims l{};
  int status = CheckArgs(nparam, params, ndims, shapes, dtypes, &l);
  if (status != kOk) return status;
  Dims &m = l.attn;
  if (!m.set_cache(shapes[9][0], block_size)) return kBadShape;
  const auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  const int64_t h = l.hidden, f = l.ffn;
  auto *out = static_cast<float *>(params[14]);
  // The runner pads a step to its bucket with rows at the end whose block table is all zeros
  // (block 0 is the trash block, never a sequence's first). They are not computed and get zero
  // outputs, which the next layers, the final norm and the LM head skip as well (small_matmul.cpp):
  // a step costs its real rows, not its bucket's (14 % of the trace's decode rows were padding).
  const auto *tables = static_cast<const int32_t *>(params[12]);
  int64_t b = m.batch;
  while (b > 0 && tables[(b - 1) * m.width] == 0) --b;
  std::fill(out + b * h, out + m.batch * h, 0.0f);
  m.batch = b;
  const float eps = *in(3);

  static thread_local std::vector<float> normed_v, qkv_v, attn_v, gate_up_v, act_v;
  float *normed = Buffer(normed_v, b * h), *qkv = Buffer(qkv_v, b * m.qkv_floats()), *attn = Buffer(attn_v, b * h);
  float *gate_up = Buffer(gate_up_v, b * 2 * f), *act = Buffer(act_v, b * f);

  ForRows(b, h, [&](int64_t r) { NormRow(in(0) + r * h, in(1), eps, h, normed + r * h); });
  static thread_local std::vector<const char *> pieces;
  SideReads side = AttentionReads(m, static_cast<const float *>(params[9]), tables,
                                  static_cast<const int32_t *>(params[13]), pieces);
  PanelMatMul(normed, in(5), qkv, b, h, m.qkv_floats(), &side);
  status = PagedAttention(m, qkv, static_cast<float *>(params[9]), in(10), in(11), tables,
                          static_cast<const int32_t *>(params[13]), attn);
  if (status != kOk) return status;
  PanelMatMul(attn, in(6), out, b, h, h);
  ForRows(b, h, [&](int64_t r) {
    for (int64_t i = r * h; i < (r + 1) * h; ++i) out[i] = in(0)[i] + out[i];
    NormRow(out + r * h, in(2), eps, h, normed + r * h);
  });
  PanelMatMul(normed, in(7), gate_up, b, h, 2 * f);
  ForRows(b, f, [&](int64_t r) { SwiGluRow(gate_up + r * 2 * f, gate_up + r * 2 * f + f, f, act + r * f); });
  PanelMatMul(act, in(8), attn, b, f, h);  // attn is free again: it takes W2's product
  for (int64_t i = 0; i < b * h; ++i) out[i] += attn[i];
  return kOk;
}

}  // namespace

#define MSLLAMA_DECODE_LAYER(BS)                                                                                    \
  extern "C" int DecodeLayerBS##BS(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                                   void *stream, void *extra) {                                                   \
    (void)stream;                                                                                                 \
    (void)extra;                                                                                                  \
    return DecodeLayerImpl(BS, nparam, params, ndims, shapes, dtypes);                                            \
  }
MSLLAMA_FOR_BLOCK_SIZES(MSLLAMA_DECODE_LAYER)
