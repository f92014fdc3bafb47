// Host entry points of moe_align. Pointers are raw host or device addresses; outputs and sizes as in
// moe_kernels.cuh. CUDA launchers return an empty string on success, else the CUDA error.
#pragma once
#include <cstdint>
#include <string>

namespace pyscale {
namespace moe {

// capacity < 0: dropless. Ids outside 0..n_experts-1 are left out and counted in `invalid`.
void align_cpu(const int32_t* ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
               int32_t* sorted_ids, int32_t* expert_ids, int32_t* n_pad, int32_t* slot_pos, int32_t* offsets,
               int32_t* counts, int32_t* dropped, int32_t* invalid);

// int32 elements of scratch the CUDA path needs (per-chunk histograms with an invalid-id column).
int64_t align_cuda_workspace(int64_t slots, int64_t n_experts);

#ifdef PYSCALE_WITH_CUDA
std::string align_cuda(const int32_t* ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
                       int32_t* sorted_ids, int32_t* expert_ids, int32_t* n_pad, int32_t* slot_pos, int32_t* offsets,
                       int32_t* counts, int32_t* dropped, int32_t* invalid, int32_t* workspace, void* stream);
#endif

}  // namespace moe
}  // namespace pyscale
