// Row-wise fp32 pieces of a Llama layer (RMSNorm, SiLU * up), shared by the pointwise ops
// (pointwise.cpp) and the whole decode layer (decode_layer.cpp). Every row depends only on itself.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace {

inline void NormRow(const float *x, const float *w, float eps, int64_t h, float *y) {
  F8 acc = F8{};
  int64_t i = 0;
  for (; i + 8 <= h; i += 8) {
    const F8 v = Load<F8>(x + i);
    acc += v * v;
  }
  float sum = HorizontalSum(acc);
  for (; i < h; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
  for (i = 0; i < h; ++i) y[i] = x[i] * inv * w[i];
}

// silu(g) * u with sigmoid(g) = 1 / (1 + e^-g), e^-|g| from ExpNonPositive (no overflow for any g).
inline void SwiGluRow(const float *g, const float *u, int64_t f, float *y) {
  int64_t i = 0;
  for (; i + 8 <= f; i += 8) {
    const F8 x = Load<F8>(g + i);
    const F8 e = ExpNonPositive(x < 0.0f ? x : -x);
    const F8 sig = x < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
    Store(y + i, x * sig * Load<F8>(u + i));
  }
  for (; i < f; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace
