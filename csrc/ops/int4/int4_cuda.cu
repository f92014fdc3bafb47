#include <cuda_runtime.h>

#include "../../cuda_launch.h"
#include "int4.h"
#include "int4_kernels.cuh"

namespace pyscale {
namespace int4 {
std::string quantize_cuda(const float* w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype,
                          uint8_t* packed, float* scales, uint8_t* zeros, void* stream) {
  const int64_t groups = n * (k / g);
  if (groups == 0) return {};
  pyscale_int4_quantize_kernel<<<blocks_for(groups), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      w, n, k, g, symmetric ? 1 : 0, scale_dtype, packed, scales, zeros);
  return last_cuda_error();
}

std::string pack_cuda(const uint8_t* codes, int64_t n, int64_t k, uint8_t* packed, void* stream) {
  const int64_t work = n * (k / 2);
  if (work == 0) return {};
  pyscale_int4_pack_kernel<<<blocks_for(work), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(codes, n, k, packed);
  return last_cuda_error();
}

std::string unpack_cuda(const uint8_t* packed, int64_t n, int64_t k, uint8_t* codes, void* stream) {
  const int64_t work = n * (k / 2);
  if (work == 0) return {};
  pyscale_int4_unpack_kernel<<<blocks_for(work), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(packed, n, k, codes);
  return last_cuda_error();
}

std::string dequantize_cuda(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t n,
                            int64_t k, int g, float* out, void* stream) {
  const int64_t work = n * k;
  if (work == 0) return {};
  pyscale_int4_dequantize_kernel<<<blocks_for(work), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      packed, scales, zeros, n, k, g, out);
  return last_cuda_error();
}

}  // namespace int4
}  // namespace pyscale
