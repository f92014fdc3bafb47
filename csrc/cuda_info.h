#pragma once
#include <string>

namespace pyscale {
struct CudaStatus {
  int device_count = 0;
  int runtime_version = 0;
  int driver_version = 0;
  std::string error;  // empty when the runtime answered
};
#ifdef PYSCALE_WITH_CUDA
CudaStatus cuda_status();
#endif
}  // namespace pyscale
