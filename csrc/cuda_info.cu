#include <cuda_runtime.h>

#include "cuda_info.h"

namespace pyscale {

// Asks the runtime how many devices it sees; creates no context.
CudaStatus cuda_status() {
  CudaStatus status;
  cudaRuntimeGetVersion(&status.runtime_version);
  cudaDriverGetVersion(&status.driver_version);
  const cudaError_t err = cudaGetDeviceCount(&status.device_count);
  if (err != cudaSuccess) {
    status.device_count = 0;
    status.error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
  }
  return status;
}

}  // namespace pyscale
