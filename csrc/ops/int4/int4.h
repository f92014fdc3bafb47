// Host entry points of the int4 ops. Pointers are raw device or host addresses; sizes as in
// int4_kernels.cuh. CUDA launchers return an empty string on success, else the CUDA error.
#pragma once
#include <cstdint>
#include <string>

namespace pyscale {
namespace int4 {

void quantize_cpu(const float* w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype,
                  uint8_t* packed, float* scales, uint8_t* zeros);
void pack_cpu(const uint8_t* codes, int64_t n, int64_t k, uint8_t* packed);
void unpack_cpu(const uint8_t* packed, int64_t n, int64_t k, uint8_t* codes);
void dequantize_cpu(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t n, int64_t k,
                    int g, float* out);

#ifdef PYSCALE_WITH_CUDA
std::string quantize_cuda(const float* w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype,
                          uint8_t* packed, float* scales, uint8_t* zeros, void* stream);
std::string pack_cuda(const uint8_t* codes, int64_t n, int64_t k, uint8_t* packed, void* stream);
std::string unpack_cuda(const uint8_t* packed, int64_t n, int64_t k, uint8_t* codes, void* stream);
std::string dequantize_cuda(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t n,
                            int64_t k, int g, float* out, void* stream);
#endif

}  // namespace int4
}  // namespace pyscale
