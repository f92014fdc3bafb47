#include <cuda_runtime.h>

#include "../../cuda_launch.h"
#include "moe.h"
#include "moe_kernels.cuh"

namespace pyscale {
namespace moe {
std::string align_cuda(const int32_t* ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
                       int32_t* sorted_ids, int32_t* expert_ids, int32_t* n_pad, int32_t* slot_pos, int32_t* offsets,
                       int32_t* counts, int32_t* dropped, int32_t* invalid, int32_t* workspace,
                       void* stream_handle) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t rows = upper_bound_rows(slots, n_experts, block);
  const int64_t blocks = upper_bound_blocks(slots, n_experts, block);
  const int64_t chunks = (slots + kAlignChunk - 1) / kAlignChunk;
  const size_t smem = static_cast<size_t>(hist_row(n_experts)) * sizeof(int32_t);
  if (rows > 0) pyscale_moe_fill_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(sorted_ids, rows, static_cast<int32_t>(slots));
  if (blocks > 0) pyscale_moe_fill_kernel<<<blocks_for(blocks), kThreads, 0, stream>>>(expert_ids, blocks, -1);
  if (chunks > 0) {
    pyscale_moe_chunk_hist_kernel<<<static_cast<unsigned>(chunks), kThreads, smem, stream>>>(ids, slots, n_experts,
                                                                                           workspace);
  }
  const int scan_threads = n_experts < 1024 ? static_cast<int>((n_experts + 31) / 32 * 32) : 1024;
  pyscale_moe_scan_kernel<<<1, scan_threads > 0 ? scan_threads : 32, 0, stream>>>(
      workspace, chunks, n_experts, block, capacity, offsets, counts, n_pad, dropped, invalid, expert_ids);
  if (chunks > 0) {
    pyscale_moe_place_kernel<<<static_cast<unsigned>(chunks), 32, smem, stream>>>(
        ids, slots, n_experts, capacity, workspace, offsets, counts, sorted_ids, slot_pos);
  }
  return last_cuda_error();
}

}  // namespace moe
}  // namespace pyscale
