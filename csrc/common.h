// Shared by host C++, nvcc and NVRTC: numeric helpers that must give bit-identical results on
// CPU and GPU, so every backend of an op produces the same interchange format.
#pragma once

#if defined(__CUDACC__)
#define PYSCALE_HD __host__ __device__ __forceinline__
#else
#define PYSCALE_HD inline
#endif

#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef long long int64_t;
#else
#include <cmath>
#include <cstdint>
#include <cstring>
#endif

namespace pyscale {

// Codes for the dtype a value is rounded to before it is stored (scales follow the activation dtype).
enum RoundDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

PYSCALE_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

PYSCALE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// Round half to even (the current rounding mode is round-to-nearest-even on both sides).
PYSCALE_HD float round_half_even(float x) { return rintf(x); }

PYSCALE_HD float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// fp32 -> bf16 -> fp32, round to nearest even; NaN is kept.
PYSCALE_HD float round_to_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return x;
  u += 0x7fffu + ((u >> 16) & 1u);
  return bits_float(u & 0xffff0000u);
}

// fp32 -> fp16 -> fp32, round to nearest even, with fp16 subnormals and overflow to inf.
PYSCALE_HD float round_to_fp16(float x) {
  const float a = fabsf(x);
  if (a != a) return x;
  if (a >= 65520.0f) return copysignf(bits_float(0x7f800000u), x);  // 65520 is the first value that rounds to inf
  if (a < 6.103515625e-05f) {                           // below 2^-14: fixed quantum 2^-24
    return copysignf(rintf(a * 16777216.0f) / 16777216.0f, x);
  }
  uint32_t u = float_bits(a);
  u += 0xfffu + ((u >> 13) & 1u);  // keep 10 mantissa bits
  return copysignf(bits_float(u & 0xffffe000u), x);
}

PYSCALE_HD float round_to_dtype(float x, int dtype) {
  return dtype == kFloat16 ? round_to_fp16(x) : (dtype == kBFloat16 ? round_to_bf16(x) : x);
}

// The smallest value of `dtype` not below x (x >= 0 and finite): a scale rounded this way never
// shrinks the step, so no code is clipped. Past the largest finite value it is +inf.
PYSCALE_HD float round_up_to_dtype(float x, int dtype) {
  const float r = round_to_dtype(x, dtype);
  if (!(r < x)) return r;
  if (dtype == kBFloat16) return bits_float(float_bits(r) + 0x10000u);  // one bf16 ulp up
  if (r >= 65504.0f) return bits_float(0x7f800000u);                      // past fp16's largest finite
  if (r < 6.103515625e-05f) return r + 5.9604644775390625e-08f;             // fp16 subnormal ulp 2^-24
  return bits_float(float_bits(r) + 0x2000u);                               // one fp16 ulp up
}

}  // namespace pyscale
