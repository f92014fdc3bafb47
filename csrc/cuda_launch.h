// Host-side launch helpers shared by the nvcc-built launchers (.cu files only: needs cuda_runtime.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace pyscale {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t work) { return static_cast<unsigned>((work + kThreads - 1) / kThreads); }

// The launch error as text (empty on success), for the bindings to raise.
inline std::string last_cuda_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace pyscale
