#include "int4.h"

#include "int4_kernels.cuh"

namespace pyscale {
namespace int4 {

void quantize_cpu(const float* w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype,
                  uint8_t* packed, float* scales, uint8_t* zeros) {
  const int64_t groups_per_row = k / g;
  uint8_t codes[128];
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t gi = 0; gi < groups_per_row; ++gi) {
      const int64_t group = row * groups_per_row + gi;
      uint8_t zero = 0;
      quantize_group(w + row * k + gi * g, g, symmetric, scale_dtype, codes, &scales[group], &zero);
      if (!symmetric) zeros[group] = zero;
      uint8_t* out = packed + row * (k / 2) + gi * g / 2;
      for (int i = 0; i < g; i += 2) out[i / 2] = pack_pair(codes[i], codes[i + 1]);
    }
  }
}

void pack_cpu(const uint8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  for (int64_t i = 0; i < n * (k / 2); ++i) packed[i] = pack_pair(codes[2 * i], codes[2 * i + 1]);
}

void unpack_cpu(const uint8_t* packed, int64_t n, int64_t k, uint8_t* codes) {
  for (int64_t i = 0; i < n * (k / 2); ++i) {
    codes[2 * i] = packed[i] & 0xF;
    codes[2 * i + 1] = packed[i] >> 4;
  }
}

void dequantize_cpu(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t n, int64_t k,
                    int g, float* out) {
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t col = 0; col < k; ++col) {
      const int64_t group = row * (k / g) + col / g;
      const uint8_t byte = packed[row * (k / 2) + col / 2];
      const uint8_t code = (col & 1) ? (byte >> 4) : (byte & 0xF);
      out[row * k + col] = dequantize_code(code, scales[group], zeros ? zeros[group] : 8);
    }
  }
}

}  // namespace int4
}  // namespace pyscale
