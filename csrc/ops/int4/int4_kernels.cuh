// int4 group-wise quantisation in the interchange format (DESIGN.md section 8).
// The per-element math lives in host/device functions used by the C++ (CPU) loops, the nvcc
// launchers and NVRTC alike, so every backend is bit-identical.
#pragma once
#include "../../common.h"

namespace pyscale {
namespace int4 {

// Scale, zero point and codes of one group of `g` weights (row-major, contiguous).
// Symmetric: s = absmax / 7, q = clamp(rne(w / s), -8, 7), stored as q + 8, zero = 8 (implicit).
// Asymmetric, over the range extended to include 0 (lo' = min(lo, 0), hi' = max(hi, 0), so a group
// that does not straddle 0 is not clipped): s = (hi' - lo') / 15, z = clamp(rne(-lo' / s), 0, 15),
// q = clamp(rne(w / s) + z, 0, 15).
// The scale is rounded up to its dtype (never a smaller step than the range needs) and the codes are
// computed against that stored scale, so |w - (q - z) s| <= s / 2 for every weight.
// A constant group c (all-zero included) is stored as s = |c| rounded to the scale dtype with
// q - z = sign(c), so it dequantises to c in that dtype exactly.
PYSCALE_HD void quantize_group(const float* w, int g, bool symmetric, int scale_dtype,
                               uint8_t* codes, float* scale_out, uint8_t* zero_out) {
  float lo = w[0], hi = w[0];
  for (int i = 1; i < g; ++i) {
    lo = fminf(lo, w[i]);
    hi = fmaxf(hi, w[i]);
  }
  if (lo == hi) {
    const float s = round_to_dtype(fabsf(lo), scale_dtype);
    const int sign = s == 0.0f ? 0 : (lo > 0.0f ? 1 : -1);
    const int zero = symmetric ? 8 : (sign < 0 ? 1 : 0);
    for (int i = 0; i < g; ++i) codes[i] = static_cast<uint8_t>(zero + sign);
    *scale_out = s;
    if (!symmetric) *zero_out = static_cast<uint8_t>(zero);
    return;
  }
  if (symmetric) {
    const float absmax = fmaxf(fabsf(lo), fabsf(hi));
    const float s = round_up_to_dtype(absmax / 7.0f, scale_dtype);
    for (int i = 0; i < g; ++i) {
      const float q = s == 0.0f ? 0.0f : clampf(round_half_even(w[i] / s), -8.0f, 7.0f);
      codes[i] = static_cast<uint8_t>(static_cast<int>(q) + 8);
    }
    *scale_out = s;
  } else {
    lo = fminf(lo, 0.0f);
    hi = fmaxf(hi, 0.0f);
    const float s = round_up_to_dtype((hi - lo) / 15.0f, scale_dtype);
    const float z = s == 0.0f ? 0.0f : clampf(round_half_even(-lo / s), 0.0f, 15.0f);
    for (int i = 0; i < g; ++i) {
      const float q = s == 0.0f ? z : clampf(round_half_even(w[i] / s) + z, 0.0f, 15.0f);
      codes[i] = static_cast<uint8_t>(q);
    }
    *scale_out = s;
    *zero_out = static_cast<uint8_t>(z);
  }
}

// Low nibble = even column, high nibble = odd column.
PYSCALE_HD uint8_t pack_pair(uint8_t even, uint8_t odd) {
  return static_cast<uint8_t>((even & 0xF) | ((odd & 0xF) << 4));
}

PYSCALE_HD float dequantize_code(uint8_t code, float scale, int zero) {
  return static_cast<float>(static_cast<int>(code) - zero) * scale;
}

}  // namespace int4
}  // namespace pyscale

#if defined(__CUDACC__)
// Entry points with C linkage so NVRTC-compiled modules expose unmangled names.
// Sizes: weights (n, k), groups of g along k; packed (n, k/2); scales/zeros (n, k/g).
extern "C" __global__ void pyscale_int4_quantize_kernel(const float* __restrict__ w, int64_t n, int64_t k,
                                                        int g, int symmetric, int scale_dtype,
                                                        uint8_t* __restrict__ packed,
                                                        float* __restrict__ scales,
                                                        uint8_t* __restrict__ zeros) {
  const int64_t groups_per_row = k / g;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= n * groups_per_row) return;
  const int64_t row = group / groups_per_row, col0 = (group % groups_per_row) * g;
  uint8_t codes[128];  // g <= 128 is checked by the host
  uint8_t zero = 0;
  pyscale::int4::quantize_group(w + row * k + col0, g, symmetric != 0, scale_dtype, codes, &scales[group], &zero);
  if (!symmetric) zeros[group] = zero;
  uint8_t* out = packed + row * (k / 2) + col0 / 2;
  for (int i = 0; i < g; i += 2) out[i / 2] = pyscale::int4::pack_pair(codes[i], codes[i + 1]);
}

extern "C" __global__ void pyscale_int4_pack_kernel(const uint8_t* __restrict__ codes, int64_t n, int64_t k,
                                                    uint8_t* __restrict__ packed) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * (k / 2)) return;
  packed[i] = pyscale::int4::pack_pair(codes[2 * i], codes[2 * i + 1]);
}

extern "C" __global__ void pyscale_int4_unpack_kernel(const uint8_t* __restrict__ packed, int64_t n, int64_t k,
                                                      uint8_t* __restrict__ codes) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * (k / 2)) return;
  codes[2 * i] = packed[i] & 0xF;
  codes[2 * i + 1] = packed[i] >> 4;
}

// zeros == nullptr means symmetric (codes carry the +8 offset).
extern "C" __global__ void pyscale_int4_dequantize_kernel(const uint8_t* __restrict__ packed,
                                                          const float* __restrict__ scales,
                                                          const uint8_t* __restrict__ zeros, int64_t n,
                                                          int64_t k, int g, float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * k) return;
  const int64_t row = i / k, col = i % k, group = row * (k / g) + col / g;
  const uint8_t byte = packed[row * (k / 2) + col / 2];
  const uint8_t code = (col & 1) ? (byte >> 4) : (byte & 0xF);
  out[i] = pyscale::int4::dequantize_code(code, scales[group], zeros ? zeros[group] : 8);
}
#endif
